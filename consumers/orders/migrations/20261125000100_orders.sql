-- The order service's own state. The platform's outbox and processed_events tables are
-- installed beside it by feedline::db::install_platform_schema.
CREATE TABLE IF NOT EXISTS orders (
    id           UUID        PRIMARY KEY,
    customer_id  UUID        NOT NULL,
    status       TEXT        NOT NULL
                 CHECK (status IN ('PENDING', 'APPROVED', 'REJECTED', 'CANCELLED')),
    total_cents  BIGINT      NOT NULL CHECK (total_cents > 0),
    reason       TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    version      INT         NOT NULL DEFAULT 1
);

CREATE INDEX IF NOT EXISTS orders_customer_id ON orders (customer_id);
