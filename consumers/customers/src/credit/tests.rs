use super::*;

fn register(id: Uuid, limit: i64) -> Input {
    Input::Register {
        customer_id: id,
        name: "Ada".into(),
        credit_limit_cents: limit,
        tenant: None,
    }
}

fn created(order_id: Uuid, customer_id: Uuid, total_cents: i64) -> Input {
    Input::OrderCreated {
        order_id,
        customer_id,
        total_cents,
    }
}

fn cancelled(order_id: Uuid, customer_id: Uuid) -> Input {
    Input::OrderCancelled {
        order_id,
        customer_id,
    }
}

fn credit(emitted: Emitted) -> CreditEventPayload {
    match emitted.event {
        Event::Credit(c) => c,
        other => panic!("expected a credit event, got {other:?}"),
    }
}

#[test]
fn reserves_up_to_the_limit_and_releases_on_cancel() {
    let c = Uuid::new_v4();
    let (o1, o2, o3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut ledger = Ledger::default();
    ledger.apply(&register(c, 10_000)).unwrap();
    assert_eq!(
        ledger.apply(&register(c, 1)),
        Err(Ignored::AlreadyRegistered)
    );

    let CreditEventPayload::CreditReserved(r) =
        credit(ledger.apply(&created(o1, c, 6000)).unwrap())
    else {
        panic!("6000 of 10000 fits");
    };
    assert_eq!(
        (r.credit_reserved_cents, r.credit_limit_cents),
        (6000, 10_000)
    );
    let CreditEventPayload::CreditLimitExceeded(e) =
        credit(ledger.apply(&created(o2, c, 5000)).unwrap())
    else {
        panic!("6000 + 5000 exceeds 10000");
    };
    assert_eq!(
        (e.credit_available_cents, e.reason.as_str()),
        (4000, LIMIT_EXCEEDED)
    );
    assert_eq!(
        ledger.apply(&created(o1, c, 6000)),
        Err(Ignored::AlreadyReserved)
    );

    let CreditEventPayload::CreditReleased(r) = credit(ledger.apply(&cancelled(o1, c)).unwrap())
    else {
        panic!("o1 held credit");
    };
    assert_eq!((r.amount_cents, r.credit_reserved_cents), (6000, 0));
    assert_eq!(
        ledger.apply(&cancelled(o1, c)),
        Err(Ignored::AlreadyReleased)
    );
    assert_eq!(
        ledger.apply(&cancelled(o2, c)),
        Err(Ignored::NothingReserved)
    );

    assert!(matches!(
        credit(ledger.apply(&created(o3, c, 5000)).unwrap()),
        CreditEventPayload::CreditReserved(_)
    ));
    assert_eq!(ledger.customer(&c).unwrap().credit_reserved_cents, 5000);
    assert_eq!(ledger.customer_inserts().len(), 1);
    assert_eq!(ledger.reservation_inserts().len(), 2);
    assert!(ledger.customer_updates().is_empty());
}

#[test]
fn unknown_customer_gets_no_credit() {
    let mut ledger = Ledger::default();
    let CreditEventPayload::CreditLimitExceeded(e) = credit(
        ledger
            .apply(&created(Uuid::new_v4(), Uuid::new_v4(), 1))
            .unwrap(),
    ) else {
        panic!("unknown customers get nothing");
    };
    assert_eq!(
        (e.credit_available_cents, e.reason.as_str()),
        (0, UNKNOWN_CUSTOMER)
    );
    assert_eq!(
        ledger.apply(&Input::ChangeLimit {
            customer_id: Uuid::new_v4(),
            credit_limit_cents: 5
        }),
        Err(Ignored::UnknownCustomer)
    );
    assert!(ledger.reservation_inserts().is_empty());
}

#[test]
fn lowered_limit_reports_current_reservations_and_refuses_more() {
    let c = Uuid::new_v4();
    let mut ledger = Ledger::new(
        [Customer {
            id: c,
            name: "Bo".into(),
            credit_limit_cents: 10_000,
            credit_reserved_cents: 8000,
        }],
        [],
    );
    let changed = ledger
        .apply(&Input::ChangeLimit {
            customer_id: c,
            credit_limit_cents: 5000,
        })
        .unwrap();
    assert_eq!(
        changed.event,
        Event::Customer(CustomerEventPayload::CreditLimitChanged(
            CreditLimitChanged {
                customer_id: c.to_string(),
                credit_limit_cents: 5000,
                credit_reserved_cents: 8000,
            }
        ))
    );
    let CreditEventPayload::CreditLimitExceeded(e) =
        credit(ledger.apply(&created(Uuid::new_v4(), c, 1)).unwrap())
    else {
        panic!("over the limit already");
    };
    assert_eq!(e.credit_available_cents, 0);
    assert_eq!(ledger.customer_updates().len(), 1);
}

#[test]
fn the_registration_passes_its_tenant_on() {
    use feedline_schemas::types::RegisterCustomer;
    let command = CustomerCommandPayload::RegisterCustomer(RegisterCustomer {
        customer_id: Uuid::new_v4().to_string(),
        name: "Ada".into(),
        credit_limit_cents: 1,
        tenant: Some("acme".into()),
    });
    let input = Input::from_command(&command).unwrap();
    let emitted = Ledger::default().apply(&input).unwrap();
    let Event::Customer(CustomerEventPayload::CustomerRegistered(registered)) = emitted.event
    else {
        panic!("a registration, got {:?}", emitted.event);
    };
    assert_eq!(registered.tenant.as_deref(), Some("acme"));
}

#[test]
fn malformed_messages_are_refused() {
    use feedline_schemas::types::{OrderCreated, RegisterCustomer};
    let negative = CustomerCommandPayload::RegisterCustomer(RegisterCustomer {
        customer_id: Uuid::new_v4().to_string(),
        name: "x".into(),
        credit_limit_cents: -1,
        tenant: None,
    });
    assert!(
        Input::from_command(&negative)
            .unwrap_err()
            .contains("credit_limit_cents")
    );
    let bad_id = OrderEventPayload::OrderCreated(OrderCreated {
        order_id: Uuid::new_v4().to_string(),
        customer_id: "nope".into(),
        total_cents: 1,
    });
    assert!(
        Input::from_order_event(&bad_id)
            .unwrap_err()
            .contains("customer_id")
    );
}
