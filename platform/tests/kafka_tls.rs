//! Kafka over TLS, against the real broker's SSL (client certificate required) and SASL_SSL
//! (SCRAM-SHA-512) listeners that `infra/kafka.sh start` sets up: every client is built from
//! the typed `[kafka]` settings, the way the services build theirs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use feedline::admin::{Admin, TopicSpec};
use feedline::config::Settings;
use feedline::{Metrics, Outgoing, Producer};
use feedline_testkit::{KafkaTls, kafka_tls, random_prefix};
use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer as _, ProducerContext};

/// How long a refused connection may take to be reported: well below the test's patience, so
/// "refused" is never a hang that happened to end.
const REFUSAL_BOUND: Duration = Duration::from_secs(15);

fn settings(kafka: &str) -> Settings {
    Settings::from_toml(&format!(
        "[kafka]\ntopic_prefix = \"{}\"\nlinger_ms = 1\n{kafka}",
        random_prefix()
    ))
    .expect("TLS settings are valid")
}

fn mtls(tls: &KafkaTls) -> String {
    format!(
        "bootstrap_servers = \"{}\"\nsecurity_protocol = \"ssl\"\nssl_ca_location = \"{}\"\n\
         ssl_certificate_location = \"{}\"\nssl_key_location = \"{}\"\nssl_key_password = \"{}\"\n",
        tls.ssl_bootstrap,
        tls.ca().display(),
        tls.client_certificate().display(),
        tls.client_key().display(),
        tls.client_key_password(),
    )
}

fn scram(tls: &KafkaTls, password: &str) -> String {
    format!(
        "bootstrap_servers = \"{}\"\nsecurity_protocol = \"sasl_ssl\"\nssl_ca_location = \"{}\"\n\
         sasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"{}\"\nsasl_password = \"{password}\"\n",
        tls.sasl_bootstrap,
        tls.ca().display(),
        tls.scram_username(),
    )
}

/// Creates a topic, produces to it and reads the message back, every client over `settings`.
async fn round_trip(settings: &Settings) {
    let topic = settings.kafka.name("tls");
    Admin::new(&settings.kafka)
        .expect("admin client")
        .ensure_topics(&[TopicSpec::new(&topic, 1)])
        .await
        .expect("topic created over TLS");
    let producer = Producer::new(&settings.kafka, Metrics::new("test")).expect("producer");
    producer
        .send(Outgoing::new(&topic, Some(b"k"), b"over tls"))
        .await
        .expect("produced over TLS");
    let consumer: BaseConsumer = settings
        .kafka
        .consumer_config(&settings.kafka.name("reader"), &settings.consumer)
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "nothing read back from {topic}");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                assert_eq!(message.payload(), Some(&b"over tls"[..]));
                break;
            }
            Some(Err(e)) => panic!("consuming over TLS failed: {e}"),
            None => {}
        }
    }
    Admin::new(&settings.kafka)
        .unwrap()
        .delete_topics(&[&topic])
        .await
        .expect("topic deleted");
}

/// What librdkafka reports through its error callback: where the reason for a refused
/// connection is (a metadata call only says the transport failed), and what the services log.
#[derive(Clone, Default)]
struct Reported(Arc<Mutex<Vec<String>>>);

impl ClientContext for Reported {
    fn error(&self, error: KafkaError, reason: &str) {
        self.0.lock().unwrap().push(format!("{error}: {reason}"));
    }
}

impl ProducerContext for Reported {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

/// Asks for the cluster's metadata, which must fail within the bound, and returns every error
/// the client reported meanwhile.
fn refused(settings: &Settings) -> String {
    let reported = Reported::default();
    // A producer, because polling it serves the error callbacks.
    let client: BaseProducer<Reported> = settings
        .kafka
        .client_config()
        .create_with_context(reported.clone())
        .expect("client");
    let started = Instant::now();
    let result = client
        .client()
        .fetch_metadata(None, Duration::from_secs(10));
    if let Ok(metadata) = result {
        panic!(
            "the broker answered with {} topics instead of refusing",
            metadata.topics().len()
        );
    }
    while reported.0.lock().unwrap().is_empty() && started.elapsed() < REFUSAL_BOUND {
        client.poll(Duration::from_millis(100));
    }
    let elapsed = started.elapsed();
    let errors = reported.0.lock().unwrap().join("\n");
    assert!(
        !errors.is_empty() && elapsed < REFUSAL_BOUND,
        "no reason for the refusal reported within {REFUSAL_BOUND:?}"
    );
    errors
}

#[tokio::test]
async fn produce_and_consume_over_mutual_tls() {
    round_trip(&settings(&mtls(&kafka_tls()))).await;
}

#[tokio::test]
async fn produce_and_consume_over_sasl_ssl_with_scram() {
    let tls = kafka_tls();
    round_trip(&settings(&scram(&tls, &tls.scram_password()))).await;
}

#[tokio::test]
async fn a_wrong_scram_password_is_an_authentication_error_not_a_hang() {
    let tls = kafka_tls();
    let error = refused(&settings(&scram(&tls, "not-the-password")));
    assert!(
        error.contains("SASL authentication error"),
        "the error names the failed authentication: {error}"
    );
}

#[tokio::test]
async fn the_mutual_tls_listener_refuses_a_client_without_a_certificate() {
    let tls = kafka_tls();
    let without_certificate = format!(
        "bootstrap_servers = \"{}\"\nsecurity_protocol = \"ssl\"\nssl_ca_location = \"{}\"\n",
        tls.ssl_bootstrap,
        tls.ca().display()
    );
    let error = refused(&settings(&without_certificate));
    assert!(error.contains("SSL"), "{error}");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_brokers_ca_is_refused() {
    let tls = kafka_tls();
    // The client's own certificate is no CA of the broker's chain.
    let wrong_ca = mtls(&tls).replace(
        &format!("ssl_ca_location = \"{}\"", tls.ca().display()),
        &format!(
            "ssl_ca_location = \"{}\"",
            tls.client_certificate().display()
        ),
    );
    let error = refused(&settings(&wrong_ca));
    assert!(error.contains("certificate verify failed"), "{error}");
}
