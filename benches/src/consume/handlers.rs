//! The handlers the consume scenario measures: the no-op, the order service's way of
//! writing to PostgreSQL, and the real order-view handler.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use feedline::codec::{AvroDecoder, CodecError, Decode, RegistryClient, Route, decode_batch};
use feedline::{CancellationToken, Handler, HandlerError, Metrics, Outcome, Settings};
use feedline_order_view::ViewSettings;
use feedline_order_view::cache::Cache;
use feedline_order_view::feed::FeedHub;
use feedline_order_view::handler::{Decoders, ViewHandler};
use feedline_order_view::metrics::ViewMetrics;
use feedline_order_view::store::{Memory as StoreMemory, Store};
use feedline_schemas::types::*;
use feedline_schemas::{CREDIT_EVENTS, ORDER_EVENTS, envelope_schema};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use sqlx::PgPool;

#[derive(Debug)]
pub(super) struct Noop;

impl Handler for Noop {
    async fn handle(&self, _batch: &[OwnedMessage]) -> Result<Outcome, HandlerError> {
        Ok(Outcome::ok())
    }
}

pub(super) async fn fresh_postgres(url: &str) -> anyhow::Result<(PgPool, String, PgPool)> {
    let admin = PgPool::connect(url)
        .await
        .context("failed to connect to PostgreSQL")?;
    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    let db_url = format!(
        "{}/{name}",
        &url[..url.rfind('/').context("database url without a name")?]
    );
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db_url)
        .await?;
    feedline::db::install_platform_schema(&pool).await?;
    sqlx::raw_sql(
        "CREATE TABLE bench_orders (
            id UUID PRIMARY KEY, customer_id UUID NOT NULL, status TEXT NOT NULL,
            stage INT NOT NULL, total_cents BIGINT NOT NULL, credit_reserved BOOLEAN NOT NULL,
            version INT NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;
    Ok((pool, name, admin))
}

/// The order service's way of writing, on an orders-like table: dedup and all rows of a
/// batch in one transaction, one statement each.
pub(super) struct PgHandler {
    pool: PgPool,
    order: AvroDecoder<OrderEvent, RegistryClient>,
    credit: AvroDecoder<CreditEvent, RegistryClient>,
    order_topic_suffix: &'static str,
}

feedline_schemas::one_of! {
    enum Decoded {
        Order(OrderEvent),
        Credit(CreditEvent),
    }
}

#[derive(Debug)]
struct RowState {
    customer: uuid::Uuid,
    status: &'static str,
    stage: i32,
    total: i64,
    reserved: bool,
}

impl PgHandler {
    pub(super) fn new(pool: PgPool, registry: Arc<RegistryClient>) -> anyhow::Result<Self> {
        Ok(PgHandler {
            pool,
            order: AvroDecoder::new(
                registry.clone(),
                envelope_schema(ORDER_EVENTS).context("schema")?,
                None,
            )?,
            credit: AvroDecoder::new(
                registry,
                envelope_schema(CREDIT_EVENTS).context("schema")?,
                None,
            )?,
            order_topic_suffix: ORDER_EVENTS,
        })
    }

    async fn write(&self, events: Vec<Decoded>) -> anyhow::Result<()> {
        let ids: Vec<String> = events
            .iter()
            .map(|e| match e {
                Decoded::Order(e) => e.event_id.clone(),
                Decoded::Credit(e) => e.event_id.clone(),
            })
            .collect();
        let mut tx = self.pool.begin().await?;
        let fresh = feedline::dedup::first_time(&mut tx, "bench-orders", &ids).await?;
        // One row per order: ON CONFLICT cannot touch a row twice in one statement.
        let mut rows: HashMap<uuid::Uuid, RowState> = HashMap::new();
        for (event, fresh) in events.iter().zip(fresh) {
            if !fresh {
                continue;
            }
            let (order, customer, total, status, stage, reserved) = match event {
                Decoded::Order(e) => match &e.payload {
                    OrderEventPayload::OrderCreated(p) => (
                        &p.order_id,
                        &p.customer_id,
                        p.total_cents,
                        "PENDING",
                        0,
                        false,
                    ),
                    OrderEventPayload::OrderApproved(p) => (
                        &p.order_id,
                        &p.customer_id,
                        p.total_cents,
                        "APPROVED",
                        1,
                        false,
                    ),
                    OrderEventPayload::OrderRejected(p) => (
                        &p.order_id,
                        &p.customer_id,
                        p.total_cents,
                        "REJECTED",
                        1,
                        false,
                    ),
                    OrderEventPayload::OrderCancelled(p) => (
                        &p.order_id,
                        &p.customer_id,
                        p.total_cents,
                        "CANCELLED",
                        2,
                        false,
                    ),
                },
                Decoded::Credit(e) => match &e.payload {
                    CreditEventPayload::CreditReserved(p) => (
                        &p.order_id,
                        &p.customer_id,
                        p.amount_cents,
                        "PENDING",
                        0,
                        true,
                    ),
                    CreditEventPayload::CreditLimitExceeded(p) => (
                        &p.order_id,
                        &p.customer_id,
                        p.amount_cents,
                        "PENDING",
                        0,
                        false,
                    ),
                    CreditEventPayload::CreditReleased(p) => (
                        &p.order_id,
                        &p.customer_id,
                        p.amount_cents,
                        "PENDING",
                        0,
                        false,
                    ),
                },
            };
            let id: uuid::Uuid = order.parse()?;
            let row = rows.entry(id).or_insert(RowState {
                customer: customer.parse()?,
                status,
                stage,
                total,
                reserved,
            });
            if stage > row.stage {
                row.status = status;
                row.stage = stage;
            }
            row.reserved |= reserved;
        }
        let n = rows.len();
        let (mut id, mut customer, mut status, mut stage, mut total, mut reserved) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (k, r) in rows {
            id.push(k);
            customer.push(r.customer);
            status.push(r.status);
            stage.push(r.stage);
            total.push(r.total);
            reserved.push(r.reserved);
        }
        sqlx::query(
            "INSERT INTO bench_orders (id, customer_id, status, stage, total_cents, credit_reserved, version)
             SELECT *, 1 FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int[], $5::bigint[], $6::bool[])
             ON CONFLICT (id) DO UPDATE SET
               status = CASE WHEN EXCLUDED.stage > bench_orders.stage THEN EXCLUDED.status ELSE bench_orders.status END,
               stage = GREATEST(EXCLUDED.stage, bench_orders.stage),
               credit_reserved = bench_orders.credit_reserved OR EXCLUDED.credit_reserved,
               version = bench_orders.version + 1,
               updated_at = now()",
        )
        .bind(&id)
        .bind(&customer)
        .bind(&status)
        .bind(&stage)
        .bind(&total)
        .bind(&reserved)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Order events and credit events, told apart by topic.
impl Route<Decoded> for PgHandler {
    fn route(&self, msg: &OwnedMessage) -> Result<&dyn Decode<Decoded>, CodecError> {
        Ok(if msg.topic().ends_with(self.order_topic_suffix) {
            &self.order
        } else {
            &self.credit
        })
    }
}

impl Handler for PgHandler {
    async fn handle(&self, batch: &[OwnedMessage]) -> Result<Outcome, HandlerError> {
        let mut outcome = Outcome::ok();
        let decoded = decode_batch(batch, &mut outcome, self).await?;
        self.write(decoded.into_iter().map(|(_, e)| e).collect())
            .await
            .map_err(HandlerError::Unknown)?;
        Ok(outcome)
    }
}

/// order-view's own handler, wired as its `spawn` wires it, on a fresh SQLite file.
/// order-view's settings as it ships them (its defaults), on the run's broker, prefix and
/// registry, with `file` as its database.
pub(super) fn view_settings(run: &Settings, file: &std::path::Path) -> anyhow::Result<Settings> {
    Ok(
        Settings::from_toml(feedline_order_view::DEFAULTS)?.with_overrides(&format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ntopic_prefix = \"{}\"\n\
             [registry]\nurl = \"{}\"\n[database]\nurl = \"sqlite:{}\"\n",
            run.kafka.bootstrap_servers,
            run.kafka.topic_prefix,
            run.registry.url,
            file.display()
        ))?,
    )
}

/// order-view's handler as order-view builds it from `settings` (its `[order_view]` section).
pub(super) async fn view_handler(
    settings: &Settings,
    token: &CancellationToken,
) -> anyhow::Result<ViewHandler> {
    let view: ViewSettings = settings.section("order_view")?;
    let platform = Metrics::new("bench-order-view");
    let metrics = ViewMetrics::new(&platform);
    let memory = StoreMemory {
        cache_kib: view.sqlite_cache_kib,
        mmap_mib: view.sqlite_mmap_mib,
    };
    let store = Store::open_with(&settings.database, memory).await?;
    let decoders = Decoders::new(
        Arc::new(RegistryClient::new(&settings.registry)),
        &settings.kafka,
    )?;
    let cache = Arc::new(Cache::new(view.cache_capacity));
    let hub = Arc::new(
        FeedHub::new(
            &store.generation().await?,
            store.clone(),
            metrics.clone(),
            view.feed_broadcast_capacity,
            view.feed_client_buffer,
            token.clone(),
        )
        .with_snapshot_limit(view.feed_snapshot_max_rows),
    );
    Ok(ViewHandler::new(decoders, store, cache, hub, metrics, view.change_log_retain).await?)
}
