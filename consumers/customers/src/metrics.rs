//! Business outcomes of the customer service, beside the platform's metrics in the same
//! registry.

use feedline::Metrics;
use feedline_schemas::types::{CreditEventPayload, CustomerEventPayload};
use prometheus::{IntCounter, IntCounterVec};
use uuid::Uuid;

use crate::credit::{Event, Ignored, UNKNOWN_CUSTOMER};

#[derive(Debug, Clone)]
pub struct CustomerMetrics {
    pub registered: IntCounter,
    pub limit_changed: IntCounter,
    pub credit_reserved: IntCounter,
    /// Refused reservations, by reason (`limit`, `unknown_customer`).
    pub credit_exceeded: IntCounterVec,
    pub credit_released: IntCounter,
    /// Messages that changed nothing (repeats, unknown customers, nothing to release).
    pub ignored: IntCounterVec,
}

impl CustomerMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        let r = metrics.register();
        CustomerMetrics {
            registered: r.counter("customers_registered_total", "customers registered"),
            limit_changed: r.counter("credit_limit_changed_total", "credit limits changed"),
            credit_reserved: r.counter("credit_reserved_total", "orders that got credit"),
            credit_exceeded: r.counters(
                "credit_exceeded_total",
                "orders refused credit",
                &["reason"],
            ),
            credit_released: r.counter(
                "credit_released_total",
                "reservations released by cancelled orders",
            ),
            ignored: r.counters(
                "customers_ignored_total",
                "customer messages that changed nothing",
                &["reason"],
            ),
        }
    }
}

/// What one batch did, logged and counted only once its transaction committed (a retried
/// batch must not count twice).
#[derive(Debug, Default)]
pub struct Tally {
    registered: u64,
    limit_changed: u64,
    reserved: u64,
    exceeded_limit: u64,
    exceeded_unknown: u64,
    released: u64,
    ignored: Vec<(Ignored, Uuid, String)>,
}

impl Tally {
    pub fn emitted(&mut self, event: &Event) {
        match event {
            Event::Customer(CustomerEventPayload::CustomerRegistered(_)) => self.registered += 1,
            Event::Customer(CustomerEventPayload::CreditLimitChanged(_)) => self.limit_changed += 1,
            Event::Credit(CreditEventPayload::CreditReserved(_)) => self.reserved += 1,
            Event::Credit(CreditEventPayload::CreditLimitExceeded(e)) => {
                if e.reason == UNKNOWN_CUSTOMER {
                    self.exceeded_unknown += 1;
                } else {
                    self.exceeded_limit += 1;
                }
            }
            Event::Credit(CreditEventPayload::CreditReleased(_)) => self.released += 1,
        }
    }

    /// `why` the message `event_id` about `customer_id` changed nothing.
    pub fn ignored(&mut self, why: Ignored, customer_id: Uuid, event_id: &str) {
        self.ignored.push((why, customer_id, event_id.to_owned()));
    }

    pub fn record(&self, metrics: &CustomerMetrics) {
        metrics.registered.inc_by(self.registered);
        metrics.limit_changed.inc_by(self.limit_changed);
        metrics.credit_reserved.inc_by(self.reserved);
        metrics
            .credit_exceeded
            .with_label_values(&["limit"])
            .inc_by(self.exceeded_limit);
        metrics
            .credit_exceeded
            .with_label_values(&["unknown_customer"])
            .inc_by(self.exceeded_unknown);
        metrics.credit_released.inc_by(self.released);
        for (why, customer_id, event_id) in &self.ignored {
            tracing::info!(%customer_id, event_id, reason = %why, "message changed nothing");
            metrics.ignored.with_label_values(&[why.kind()]).inc();
        }
    }
}
