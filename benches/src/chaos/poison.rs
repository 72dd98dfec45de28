//! Poison inputs, each carrying a marker (`chaos-poison-<uuid>`) in its bytes, so the
//! dead-letter check can tell the harness's poison from a message the system lost to a DLQ.

use std::time::Duration;

use anyhow::Context;
use feedline::Settings;
use feedline::codec::RegistryClient;
use feedline_schemas::types::{
    CustomerCommand, CustomerCommandPayload, OrderCommand, OrderCommandPayload, PlaceOrder,
    RegisterCustomer,
};
use feedline_schemas::{CUSTOMER_COMMANDS, ORDER_COMMANDS};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

use super::load::Client;

pub const MARKER: &str = "chaos-poison-";
/// The header every poison message sent straight to a topic carries.
pub const HEADER: &str = "chaos-poison";

/// One poison input and where it should end: in `<topic>.dlq` (unprefixed topic name), or
/// nowhere when the gateway refused it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Poison {
    pub marker: String,
    pub what: String,
    pub topic: String,
    /// `None` when nothing should reach a topic (the gateway answered 4xx).
    pub expect_dlq: bool,
    pub note: String,
}

fn marker() -> String {
    format!("{MARKER}{}", uuid::Uuid::new_v4())
}

/// Sends one of each poison: through the gateway, then straight onto the command topics.
pub async fn send(settings: &Settings, client: &Client) -> anyhow::Result<Vec<Poison>> {
    let mut sent = Vec::new();

    // A NUL in a name: PostgreSQL cannot store it. The gateway should refuse it (422); if it
    // takes it, the customers service must dead-letter it, not retry it forever.
    let mark = marker();
    let answer = client
        .http
        .post(format!("{}/customers", client.base))
        .timeout(Duration::from_secs(10))
        .bearer_auth(client.bearer().await)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(&json!({"name": format!("{mark}\u{0}"), "credit_limit": "1.00"}))
        .send()
        .await
        .context("failed to POST the poison customer")?;
    let status = answer.status();
    sent.push(Poison {
        marker: mark,
        what: "POST /customers with a NUL in the name".into(),
        topic: CUSTOMER_COMMANDS.into(),
        expect_dlq: status.is_success(),
        note: format!("the gateway answered {status}"),
    });

    let producer: FutureProducer = settings
        .kafka
        .producer_config()
        .create()
        .context("failed to create the poison producer")?;
    let registry = RegistryClient::new(&settings.registry);
    let produce = |topic: &'static str, mark: String, payload: Vec<u8>, what: &str| {
        let producer = producer.clone();
        let name = settings.kafka.name(topic);
        let what = what.to_owned();
        async move {
            let headers = OwnedHeaders::new().insert(Header {
                key: HEADER,
                value: Some(mark.as_bytes()),
            });
            producer
                .send(
                    FutureRecord::to(&name)
                        .key(mark.as_bytes())
                        .payload(&payload)
                        .headers(headers),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .with_context(|| format!("failed to send poison to {name}"))?;
            anyhow::Ok(Poison {
                marker: mark,
                what,
                topic: topic.into(),
                expect_dlq: true,
                note: String::new(),
            })
        }
    };

    for topic in [ORDER_COMMANDS, CUSTOMER_COMMANDS] {
        let mark = marker();
        // Not Confluent-framed (no magic byte): no decoder can read it.
        let bytes = format!("{mark}: these bytes are not Avro").into_bytes();
        sent.push(produce(topic, mark, bytes, "undecodable bytes").await?);
    }

    // Valid Avro, written with the registered schema, whose data the service must refuse.
    let mark = marker();
    let encoder =
        feedline::contracts::encoder::<OrderCommand, _>(&registry, &settings.kafka, ORDER_COMMANDS)
            .await
            .context("failed to get the order-commands encoder")?;
    let customer = uuid::Uuid::now_v7().to_string();
    let command = OrderCommand::new(
        &mark,
        mark.clone(),
        None,
        OrderCommandPayload::PlaceOrder(PlaceOrder {
            order_id: uuid::Uuid::now_v7().to_string(),
            customer_id: customer,
            total_cents: -100,
        }),
    );
    let bytes = encoder.encode(&command)?;
    sent.push(
        produce(
            ORDER_COMMANDS,
            mark,
            bytes,
            "valid Avro, PlaceOrder with a negative total",
        )
        .await?,
    );

    let mark = marker();
    let encoder = feedline::contracts::encoder::<CustomerCommand, _>(
        &registry,
        &settings.kafka,
        CUSTOMER_COMMANDS,
    )
    .await
    .context("failed to get the customer-commands encoder")?;
    let command = CustomerCommand::new(
        &mark,
        mark.clone(),
        None,
        CustomerCommandPayload::RegisterCustomer(RegisterCustomer {
            customer_id: uuid::Uuid::now_v7().to_string(),
            name: mark.clone(),
            credit_limit_cents: -1,
            tenant: None,
        }),
    );
    let bytes = encoder.encode(&command)?;
    sent.push(
        produce(
            CUSTOMER_COMMANDS,
            mark,
            bytes,
            "valid Avro, RegisterCustomer with a negative credit limit",
        )
        .await?,
    );
    Ok(sent)
}
