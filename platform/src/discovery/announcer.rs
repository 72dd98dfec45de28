//! An instance's heartbeat: its announcement every `discovery.heartbeat_ms`, a tombstone when
//! it stops cleanly. Announcing never stops the service: a broker or registry that is away
//! only delays the next announcement (and the Directory counts the instance down meanwhile,
//! which is right: others could not reach it through Kafka either).

use std::net::SocketAddr;
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use tokio_util::sync::CancellationToken;

use super::announcement::Announcement;
use super::{DiscoverySettings, SCHEMA, now_ms, subject, topic_spec};
use crate::codec::{AvroEncoder, RegistryClient};
use crate::config::Settings;
use crate::consumer::Progress;
use crate::health::Health;
use crate::producer::{Outgoing, Producer};

/// Where an announcement's readiness, lag and partitions come from.
#[derive(Debug, Clone)]
pub struct Beacon {
    pub health: Health,
    /// The service's consumer, for its lag and partitions; `None` for a service without one.
    pub consumer: Option<Progress>,
}

#[derive(Debug)]
pub struct Announcer {
    settings: DiscoverySettings,
    topic: String,
    subject: String,
    admin: crate::config::KafkaSettings,
    registry: RegistryClient,
    producer: Producer,
    beacon: Beacon,
    template: Announcement,
}

impl Announcer {
    /// `addr` is where the instance's HTTP server is bound; `producer` sends the
    /// announcements (the service's own: one librdkafka client less).
    pub fn new(settings: &Settings, addr: SocketAddr, producer: Producer, beacon: Beacon) -> Self {
        let discovery = settings.discovery.clone();
        let url = discovery
            .advertised_url
            .clone()
            .unwrap_or_else(|| advertised_url(&settings.http.host, addr.port()));
        let template = Announcement {
            service: settings.service_name.clone(),
            instance_id: instance_id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            url: url.trim_end_matches('/').to_owned(),
            started_at_ms: now_ms(),
            announced_at_ms: 0,
            heartbeat_ms: discovery.heartbeat_ms as i64,
            ready: false,
            lag: None,
            partitions: Vec::new(),
        };
        Announcer {
            topic: settings.kafka.name(super::TOPIC),
            subject: subject(&settings.kafka),
            admin: settings.kafka.clone(),
            registry: RegistryClient::new(&settings.registry),
            settings: discovery,
            producer,
            beacon,
            template,
        }
    }

    /// For a server that speaks TLS: the derived URL says https:// (a configured
    /// `advertised_url` stays as it is).
    pub fn https(mut self) -> Self {
        if self.settings.advertised_url.is_none()
            && let Some(rest) = self.template.url.strip_prefix("http://")
        {
            self.template.url = format!("https://{rest}");
        }
        self
    }

    /// This instance's id and advertised URL.
    pub fn identity(&self) -> (&str, &str) {
        (&self.template.instance_id, &self.template.url)
    }

    /// Announces until `token` is cancelled, then sends the tombstone. Returns `Ok` whatever
    /// Kafka or the registry did: discovery is never a reason for a service to stop.
    pub async fn run(self, token: CancellationToken) -> anyhow::Result<()> {
        if !self.settings.enabled {
            return Ok(());
        }
        let mut encoder: Option<AvroEncoder<Announcement>> = None;
        let mut tick = tokio::time::interval(self.settings.heartbeat());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut announced = false;
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {}
            }
            match self.announce(&mut encoder).await {
                Ok(()) => {
                    if failing || !announced {
                        tracing::info!(
                            instance = %self.template.instance_id,
                            url = %self.template.url,
                            "announced on the service directory"
                        );
                    }
                    failing = false;
                    announced = true;
                }
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "cannot announce this instance, trying again every heartbeat");
                    failing = true;
                }
                Err(_) => {}
            }
        }
        if announced {
            self.goodbye().await;
        }
        Ok(())
    }

    async fn announce(
        &self,
        encoder: &mut Option<AvroEncoder<Announcement>>,
    ) -> anyhow::Result<()> {
        let encoder = match encoder {
            Some(encoder) => encoder,
            None => {
                crate::admin::Admin::new(&self.admin)?
                    .ensure_topics(&[topic_spec(&self.admin)])
                    .await?;
                encoder.insert(AvroEncoder::new(&self.registry, &self.subject, SCHEMA).await?)
            }
        };
        let record = self.current().await;
        let payload = encoder.encode(&record)?;
        let key = record.key();
        let send = self
            .producer
            .send(Outgoing::new(&self.topic, Some(key.as_bytes()), &payload));
        // A send that outlives its heartbeat is late anyway; the next one supersedes it.
        tokio::time::timeout(self.settings.heartbeat() * 2, send)
            .await
            .map_err(|_| {
                anyhow::anyhow!("the broker did not acknowledge the announcement in time")
            })??;
        Ok(())
    }

    async fn current(&self) -> Announcement {
        let mut record = self.template.clone();
        record.announced_at_ms = now_ms();
        record.ready = self.beacon.health.ready().await.is_ok();
        if let Some(consumer) = &self.beacon.consumer {
            let (partitions, lag) = consumer.assignment();
            record.partitions = partitions;
            record.lag = lag;
        }
        record
    }

    /// The tombstone: the Directory drops this instance at once instead of waiting for its
    /// heartbeats to stop.
    async fn goodbye(&self) {
        let key = self.template.key();
        let record = FutureRecord::<[u8], [u8]>::to(&self.topic).key(key.as_bytes());
        match self
            .producer
            .inner()
            .send(record, Duration::from_secs(3))
            .await
        {
            Ok(_) => {
                tracing::info!(instance = %self.template.instance_id, "left the service directory")
            }
            Err((e, _)) => {
                tracing::warn!(error = %e, "cannot leave the service directory; it will count this instance down")
            }
        }
    }
}

/// The host part of the default advertised URL: the bound address unless it is a wildcard,
/// then this machine's name (a container's or pod's host name resolves on its network).
fn advertised_url(host: &str, port: u16) -> String {
    let wildcard = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified());
    let host = if wildcard {
        host_name()
    } else if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    format!("http://{host}:{port}")
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Unique among one service's instances: the host (a pod or container per instance), the
/// process id (several instances on one machine), and a number for the second and later
/// instances of one process (the in-process system and the tests run several).
fn instance_id() -> String {
    static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = format!("{}-{}", host_name(), std::process::id());
    match STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
        0 => base,
        n => format!("{base}-{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_host_is_replaced_by_the_host_name() {
        assert_eq!(advertised_url("127.0.0.1", 8093), "http://127.0.0.1:8093");
        assert_eq!(advertised_url("::1", 80), "http://[::1]:80");
        let named = advertised_url("0.0.0.0", 8093);
        assert!(!named.contains("0.0.0.0"), "{named}");
        assert!(named.ends_with(":8093"), "{named}");
    }

    #[test]
    fn instance_ids_name_the_process() {
        let pid = std::process::id().to_string();
        let (first, second) = (instance_id(), instance_id());
        assert_ne!(first, second);
        assert!(
            first.contains(&pid) && second.contains(&pid),
            "{first} {second}"
        );
    }
}
