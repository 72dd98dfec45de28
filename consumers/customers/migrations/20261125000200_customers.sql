-- The customer service's own state. The platform's outbox and processed_events tables are
-- installed beside it by feedline::db::install_platform_schema.
CREATE TABLE IF NOT EXISTS customers (
    id                     UUID        PRIMARY KEY,
    name                   TEXT        NOT NULL,
    credit_limit_cents     BIGINT      NOT NULL CHECK (credit_limit_cents >= 0),
    -- May exceed the limit after the limit was lowered; new reservations are refused then.
    credit_reserved_cents  BIGINT      NOT NULL DEFAULT 0 CHECK (credit_reserved_cents >= 0),
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per order that got credit; a refused order leaves no row.
CREATE TABLE IF NOT EXISTS reservations (
    order_id      UUID        PRIMARY KEY,
    customer_id   UUID        NOT NULL REFERENCES customers (id),
    amount_cents  BIGINT      NOT NULL CHECK (amount_cents > 0),
    status        TEXT        NOT NULL CHECK (status IN ('RESERVED', 'RELEASED')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS reservations_customer_id ON reservations (customer_id);
