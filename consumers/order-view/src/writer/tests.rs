use super::*;
use crate::metrics::ViewMetrics;
use crate::model::{Change, Filter, Status};
use crate::store::Store;
use feedline::config::DatabaseSettings;
use feedline_schemas::types::{OrderApproved, OrderCreated, OrderEvent, OrderEventPayload};
use std::sync::Arc;

async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("view.db").display());
    let store = Store::open(&DatabaseSettings {
        url: url.into(),
        max_connections: 1,
    })
    .await
    .unwrap();
    (dir, store)
}

/// An order's creation with the given event id and time (order n of customer 1).
fn created(event_id: &str, at: i64, n: u32) -> Event {
    let mut e = OrderEvent::new(
        "test",
        "corr".into(),
        None,
        OrderEventPayload::OrderCreated(OrderCreated {
            order_id: format!("00000000-0000-0000-0000-{n:012}"),
            customer_id: "00000000-0000-0000-0000-00000000000c".into(),
            total_cents: 100,
        }),
    );
    e.event_id = event_id.into();
    e.occurred_at = at;
    Event::Order(e)
}

/// The creation of order `order`, under event id n.
fn created_with_id(n: u32, order: u32) -> Event {
    let Event::Order(mut e) = uuid_event(order) else {
        unreachable!()
    };
    e.event_id = format!("00000000-0000-4000-8000-{n:012}");
    Event::Order(e)
}

/// A whole batch as the writer's pieces.
fn whole(events: &[Event]) -> [Piece; 2] {
    [Piece::Events(events.to_vec()), Piece::End]
}

fn uuid_event(n: u32) -> Event {
    created(
        &format!("00000000-0000-4000-8000-{n:012}"),
        1_700_000_000_000,
        n,
    )
}

/// Rows go to SQLite as bound values: every value must come back exactly, to the
/// readers and to the writer's own loading, however awkward its characters and however
/// large its numbers.
#[tokio::test]
async fn written_rows_read_back_exactly() {
    let (_dir, store) = temp_store().await;
    let mut writer = store.writer(10).await.unwrap();
    let awkward = "O'Brien \"quoted\" back\\slash\nnew line\ttab \u{1} ünï 😀 \u{2028}";
    let order = Order {
        id: "order-1".into(),
        customer_id: "customer-1".into(),
        customer_name: Some(awkward.into()),
        status: Status::Rejected,
        total_cents: i64::MAX,
        reason: Some(format!("{awkward} reason")),
        created_at: i64::MIN,
        updated_at: 1_700_000_000_123,
        tenant: Some(awkward.into()),
    };
    let plain = Order {
        id: "order-2".into(),
        customer_name: None,
        reason: None,
        status: Status::Pending,
        total_cents: 0,
        tenant: None,
        ..order.clone()
    };
    let customer = Customer {
        id: "customer-1".into(),
        name: Some(awkward.into()),
        credit_limit_cents: 9_007_199_254_740_993, // 2^53 + 1: no float on the way
        credit_reserved_cents: -1,
        limit_at: None,
        reserved_at: Some(42),
        updated_at: 7,
        tenant: Some("acme".into()),
    };
    let mut ws = WorkingSet::new(1);
    let change = |seq, kind, order_id: Option<&str>, data: &str| {
        Arc::new(Change {
            seq,
            kind,
            customer_id: "customer-1".into(),
            order_id: order_id.map(Into::into),
            data: data.into(),
            tenant: Some("acme".into()),
        })
    };
    ws.changes = vec![
        change(
            1,
            Kind::Order,
            Some("order-1"),
            &format!("{{\"x\":\"{awkward}\"}}"),
        ),
        change(2, Kind::Order, Some("order-2"), "{}"),
        change(3, Kind::Customer, None, awkward),
    ];
    for o in [&order, &plain] {
        ws.orders.insert(o.id.clone(), o.clone());
    }
    ws.customers.insert(customer.id.clone(), customer.clone());

    let tx = writer.conn.transaction().unwrap();
    write_rows(&tx, &ws).unwrap();
    tx.commit().unwrap();

    assert_eq!(store.order("order-1").await.unwrap(), Some(order.clone()));
    assert_eq!(store.order("order-2").await.unwrap(), Some(plain.clone()));
    assert_eq!(store.customer("customer-1").await.unwrap(), Some(customer));
    let page = store
        .changes_page(0, 10, &Filter::default(), 10)
        .await
        .unwrap();
    let written: Vec<Change> = ws.changes.iter().map(|c| Change::clone(c)).collect();
    assert_eq!(page.changes, written);
    let mut select = writer.conn.prepare_cached(&SELECT_ORDER).unwrap();
    for expected in [order, plain] {
        let loaded = order_by_id(&mut select, &expected.id).unwrap();
        assert_eq!(loaded, Some(expected));
    }
    assert_eq!(order_by_id(&mut select, "missing").unwrap(), None);
}

#[tokio::test]
async fn an_event_is_new_once() {
    let (_dir, store) = temp_store().await;
    let mut writer = store.writer(10).await.unwrap();
    let tx = writer.conn.transaction().unwrap();
    let ids = |events: Vec<&Event>| -> Vec<String> {
        events.iter().map(|e| e.event_id().to_owned()).collect()
    };
    let first: Vec<Event> = (0..200).map(uuid_event).collect();
    assert_eq!(record_processed(&tx, &first).unwrap().len(), 200);
    // Seen before, or repeated within the batch: not new.
    let mixed: Vec<Event> = [199, 200, 201, 200, 0].map(uuid_event).into();
    let fresh = ids(record_processed(&tx, &mixed).unwrap());
    assert_eq!(fresh, ids(vec![&mixed[1], &mixed[2]]));
    // An id that is not a UUID is recorded as its text; the time is part of the key.
    let odd = [
        created("not-a-uuid", 1, 1),
        created("not-a-uuid", 1, 1),
        created("not-a-uuid", 2, 1),
    ];
    assert_eq!(record_processed(&tx, &odd).unwrap().len(), 2);
    tx.commit().unwrap();
    let count: i64 = writer
        .conn
        .query_row("SELECT count(*) FROM processed_events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 204);
}

/// A batch applied again (a redelivery) changes nothing, and a writer opened again on
/// the file numbers its changes after the last one.
#[tokio::test]
async fn redeliveries_change_nothing_and_numbering_survives_a_reopen() {
    let (_dir, store) = temp_store().await;
    let metrics = ViewMetrics::new(&feedline::Metrics::new("test"));
    let token = feedline::CancellationToken::new();
    let hub = FeedHub::new("test", store.clone(), metrics, 16, 16, token);
    let cache = Cache::new(100);
    let batch: Vec<Event> = (0..3).map(uuid_event).collect();

    let mut writer = store.writer(10).await.unwrap();
    let applied = writer.apply(whole(&batch), &cache, &hub).unwrap();
    assert_eq!((applied.ws.changes.len(), applied.duplicates), (3, 0));
    let again = writer.apply(whole(&batch), &cache, &hub).unwrap();
    assert_eq!((again.ws.changes.len(), again.duplicates), (0, 3));
    drop(writer);

    let mut writer = store.writer(10).await.unwrap();
    let more: Vec<Event> = (3..5).map(uuid_event).collect();
    let applied = writer.apply(whole(&more), &Cache::new(100), &hub).unwrap();
    let seqs: Vec<i64> = applied.ws.changes.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [4, 5]);
    assert_eq!(store.seq_bounds().await.unwrap(), (Some(1), 5));
}

fn count(writer: &Writer, table: &str) -> i64 {
    writer
        .conn
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// Ids older than the retention are pruned in chunks once they were applied longer ago
/// than it too; newer ones stay, and so do old ones applied recently (a rebuild's).
#[tokio::test]
async fn ids_older_than_the_retention_are_pruned_once_applied_that_long_ago() {
    let (_dir, store) = temp_store().await;
    let metrics = ViewMetrics::new(&feedline::Metrics::new("test"));
    let hub = FeedHub::new("test", store.clone(), metrics, 16, 16, Default::default());
    let mut writer = store.writer(10).await.unwrap();
    const DAY: i64 = 86_400_000;
    let now = now_ms();
    let at = |n: u32, age: i64| created(&format!("00000000-0000-4000-8000-{n:012}"), now - age, n);
    let events: Vec<Event> = (0..1500)
        .map(|n| at(n, 8 * DAY))
        .chain((1500..1520).map(|n| at(n, 6 * DAY)))
        .chain((1520..1525).map(|n| at(n, 0)))
        .collect();
    writer.apply(whole(&events), &Cache::new(10), &hub).unwrap();
    let week = Duration::from_secs(7 * 24 * 3600);

    // Applied just now, as a rebuild applies old events: a redelivery may still come.
    assert_eq!(writer.prune_chunk(now, week, 1000).unwrap(), 0);
    assert_eq!(count(&writer, "processed_events"), 1525);

    // Eight days later (the batch's minute moved back rather than the clock forward,
    // which would age the newer ids too).
    writer
        .conn
        .execute("UPDATE applied_minutes SET minute = minute - ?1", [8 * DAY])
        .unwrap();
    let chunks: Vec<u64> = (0..3)
        .map(|_| writer.prune_chunk(now, week, 1000).unwrap())
        .collect();
    assert_eq!(chunks, [1000, 500, 0], "bounded chunks, every old id");
    assert_eq!(count(&writer, "processed_events"), 25, "the newer ids stay");
    assert_eq!(count(&writer, "applied_minutes"), 0, "old minutes go too");

    // What is left still absorbs a redelivery.
    let again = writer
        .apply(whole(&events[1500..]), &Cache::new(10), &hub)
        .unwrap();
    assert_eq!(again.duplicates, 25);
}

/// Committed pages reach the database file without any commit crossing the automatic
/// checkpoint's threshold: the checkpointer copied them.
#[tokio::test]
async fn the_checkpointer_copies_committed_pages_into_the_file() {
    let (dir, store) = temp_store().await;
    let file = dir.path().join("view.db");
    let before = std::fs::metadata(&file).unwrap().len();
    let metrics = ViewMetrics::new(&feedline::Metrics::new("test"));
    let hub = FeedHub::new("test", store.clone(), metrics, 16, 16, Default::default());
    let mut writer = store.writer(10_000).await.unwrap();
    let batch: Vec<Event> = (0..2_000).map(uuid_event).collect();
    writer.apply(whole(&batch), &Cache::new(10), &hub).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::metadata(&file).unwrap().len() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the file is still {before} bytes: nothing was checkpointed"
        );
        tokio::time::sleep(CHECKPOINT_EVERY).await;
    }
}

/// A batch comes in pieces: a row an earlier piece changed is not loaded again for a
/// later one (the cache still holds it as it was before the batch), and pieces that stop
/// without an end write nothing.
#[tokio::test]
async fn pieces_build_on_each_other_and_an_unfinished_batch_writes_nothing() {
    let (_dir, store) = temp_store().await;
    let metrics = ViewMetrics::new(&feedline::Metrics::new("test"));
    let hub = FeedHub::new("test", store.clone(), metrics, 16, 16, Default::default());
    let cache = Cache::new(100);
    let mut writer = store.writer(10).await.unwrap();
    let created = uuid_event(1);
    writer.apply(whole(&[created]), &cache, &hub).unwrap();

    let Event::Order(mut approved) = uuid_event(2) else {
        unreachable!()
    };
    approved.payload = OrderEventPayload::OrderApproved(OrderApproved {
        order_id: format!("00000000-0000-0000-0000-{:012}", 1),
        customer_id: "00000000-0000-0000-0000-00000000000c".into(),
        total_cents: 100,
    });
    // The creation again under another id: no change, if applied to the approved row.
    let again = created_with_id(3, 1);
    let unfinished = [Piece::Events(vec![Event::Order(approved.clone())])];
    assert!(matches!(
        writer.apply(unfinished, &cache, &hub),
        Err(StoreError::Abandoned)
    ));
    let pieces = [
        Piece::Events(vec![Event::Order(approved)]),
        Piece::Events(vec![again]),
        Piece::End,
    ];
    let applied = writer.apply(pieces, &cache, &hub).unwrap();
    let seqs: Vec<i64> = applied.ws.changes.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [2], "one change, numbered after the first batch's");
    let order = store
        .order("00000000-0000-0000-0000-000000000001")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(order.status, Status::Approved);
}
