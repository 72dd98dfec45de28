//! Business outcomes of the order service, beside the platform's metrics in the same registry.

use feedline::Metrics;
use feedline_schemas::types::OrderEventPayload;
use prometheus::{IntCounter, IntCounterVec};
use uuid::Uuid;

use crate::order::Ignored;

#[derive(Debug, Clone)]
pub struct OrderMetrics {
    pub created: IntCounter,
    pub approved: IntCounter,
    pub rejected: IntCounter,
    pub cancelled: IntCounter,
    /// Messages that changed nothing (repeats, unknown orders, late decisions), by reason.
    pub ignored: IntCounterVec,
}

impl OrderMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        let r = metrics.register();
        OrderMetrics {
            created: r.counter("orders_created_total", "orders placed (PENDING)"),
            approved: r.counter(
                "orders_approved_total",
                "orders approved after credit was reserved",
            ),
            rejected: r.counter(
                "orders_rejected_total",
                "orders rejected by the credit check",
            ),
            cancelled: r.counter("orders_cancelled_total", "orders cancelled"),
            ignored: r.counters(
                "orders_ignored_total",
                "order messages that changed nothing",
                &["reason"],
            ),
        }
    }
}

/// What one batch did, logged and counted only once its transaction committed (a retried batch must
/// not count twice).
#[derive(Debug, Default)]
pub struct Tally {
    created: u64,
    approved: u64,
    rejected: u64,
    cancelled: u64,
    ignored: Vec<(Ignored, Uuid, String)>,
}

impl Tally {
    pub fn emitted(&mut self, payload: &OrderEventPayload) {
        match payload {
            OrderEventPayload::OrderCreated(_) => self.created += 1,
            OrderEventPayload::OrderApproved(_) => self.approved += 1,
            OrderEventPayload::OrderRejected(_) => self.rejected += 1,
            OrderEventPayload::OrderCancelled(_) => self.cancelled += 1,
        }
    }

    /// `why` the message `event_id` about `order_id` changed nothing.
    pub fn ignored(&mut self, why: Ignored, order_id: Uuid, event_id: &str) {
        self.ignored.push((why, order_id, event_id.to_owned()));
    }

    pub fn record(&self, metrics: &OrderMetrics) {
        metrics.created.inc_by(self.created);
        metrics.approved.inc_by(self.approved);
        metrics.rejected.inc_by(self.rejected);
        metrics.cancelled.inc_by(self.cancelled);
        for (why, order_id, event_id) in &self.ignored {
            tracing::info!(%order_id, event_id, reason = %why, "message changed nothing");
            metrics.ignored.with_label_values(&[why.kind()]).inc();
        }
    }
}
