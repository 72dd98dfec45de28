//! Kafka's own latency on the same broker with feedline's client settings, as the e2e
//! baseline: raw rdkafka at the same rate over two hops, as an order takes two Kafka hops
//! from the gateway's 202 to the feed (order-commands, then order-events). A relay between
//! the hops consumes the first topic and produces each message on to the second, as a
//! service does, without decoding or a database.

use std::time::{Duration, Instant};

use feedline::Settings;
use feedline::admin::{Admin, TopicSpec};
use futures::StreamExt;
use hdrhistogram::Histogram;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::common::{self, Meter, Percentiles};

/// Partitions of each hop's topic, as the services' topics have by default.
const PARTITIONS: i32 = 6;

/// What the raw hops measured.
#[derive(Debug)]
pub(super) struct Hops {
    /// Send → received by the relay.
    pub(super) one: Percentiles,
    /// Send → received at the end of the second hop.
    pub(super) two: Percentiles,
    /// Messages sent per second.
    pub(super) sent: Vec<f64>,
}

/// Sends `rate` messages a second for `seconds` through two topics; the first second (at
/// most a fifth of the messages) is warm-up, not measured.
pub(super) async fn kafka_hops(
    settings: &Settings,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<Hops> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (first, second) = (format!("bench-hop1-{run}"), format!("bench-hop2-{run}"));
    let admin = Admin::new(&settings.kafka)?;
    admin
        .ensure_topics(&[
            TopicSpec::new(&first, PARTITIONS),
            TopicSpec::new(&second, PARTITIONS),
        ])
        .await?;
    let outcome = measure(settings, (&first, &second), rate, seconds).await;
    admin.delete_topics(&[&first, &second]).await?;
    outcome
}

async fn measure(
    settings: &Settings,
    (first, second): (&str, &str),
    rate: f64,
    seconds: f64,
) -> anyhow::Result<Hops> {
    let producer: FutureProducer = settings.kafka.producer_config().create()?;
    let relay_in = consumer_from_start(settings, first)?;
    let relay_out: FutureProducer = settings.kafka.producer_config().create()?;
    let end = consumer_from_start(settings, second)?;
    // Both readers fetching every partition before the clock starts.
    fetching(&producer, &relay_in, first).await?;
    fetching(&producer, &end, second).await?;
    let base = Instant::now();
    let n = (rate * seconds) as usize;
    let warm = (rate as usize).min(n / 5);
    let relay = {
        let second = second.to_owned();
        tokio::spawn(async move {
            let mut hist = common::histogram();
            let mut acks = futures::stream::FuturesUnordered::new();
            for _ in 0..n {
                let Ok(Ok(msg)) =
                    tokio::time::timeout(Duration::from_secs(10), relay_in.recv()).await
                else {
                    break;
                };
                time(&msg, base, warm, &mut hist);
                let (key, payload) = (msg.key().unwrap_or_default(), msg.payload());
                let record = FutureRecord::to(&second)
                    .key(key)
                    .payload(payload.unwrap_or_default());
                if let Ok(ack) = relay_out.send_result(record) {
                    acks.push(ack);
                }
                while let Some(Some(_)) = futures::FutureExt::now_or_never(acks.next()) {}
            }
            while acks.next().await.is_some() {}
            hist
        })
    };
    let reader = tokio::spawn(async move {
        let mut hist = common::histogram();
        for _ in 0..n {
            let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_secs(10), end.recv()).await
            else {
                break;
            };
            time(&msg, base, warm, &mut hist);
        }
        hist
    });
    let sent = send(&producer, first, rate, n, base).await?;
    let one = relay.await?;
    let two = reader.await?;
    Ok(Hops {
        one: Percentiles::of(&one),
        two: Percentiles::of(&two),
        sent,
    })
}

/// Sends `n` messages at `rate` a second, each keyed by its index and carrying its send time
/// (nanoseconds since `base`); returns the per-second send rates.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    rate: f64,
    n: usize,
    base: Instant,
) -> anyhow::Result<Vec<f64>> {
    let meter = Meter::start("kafka hops (raw rdkafka)");
    let t0 = Instant::now();
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let at = t0 + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let stamp = (base.elapsed().as_nanos() as u64).to_le_bytes();
        let key = (i as u64).to_le_bytes();
        let record = FutureRecord::to(topic).key(&key[..]).payload(&stamp[..]);
        acks.push(producer.send_result(record).map_err(|(e, _)| e)?);
        while let Some(Some(_)) = futures::FutureExt::now_or_never(acks.next()) {}
        meter.add(1);
    }
    while acks.next().await.is_some() {}
    Ok(meter.finish())
}

/// Sends a probe to each partition of `topic` and waits until `consumer` has read them all:
/// from then on it is fetching, and no message of the run waits for it to start.
async fn fetching(
    producer: &FutureProducer,
    consumer: &StreamConsumer,
    topic: &str,
) -> anyhow::Result<()> {
    for p in 0..PARTITIONS {
        let record = FutureRecord::<(), _>::to(topic)
            .partition(p)
            .payload("probe");
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
    }
    for _ in 0..PARTITIONS {
        tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .map_err(|_| anyhow::anyhow!("{topic}'s reader did not start fetching"))??;
    }
    Ok(())
}

/// A reader of `topic` from its first offset: the topics are this run's own and start empty.
fn consumer_from_start(settings: &Settings, topic: &str) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = settings
        .kafka
        .consumer_config(
            &format!("bench-hop-{}", uuid::Uuid::new_v4().simple()),
            &settings.consumer,
        )
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Records the time since `msg` was first sent, unless it was one of the first `warm`.
fn time(msg: &impl Message, base: Instant, warm: usize, hist: &mut Histogram<u64>) {
    let number = |bytes: Option<&[u8]>| {
        bytes
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0)
    };
    let (index, sent) = (number(msg.key()), number(msg.payload()));
    if index as usize >= warm {
        common::record(
            hist,
            base.elapsed().saturating_sub(Duration::from_nanos(sent)),
        );
    }
}
