-- The read model of order-view: one SQLite file per replica, rebuildable from the topics.

-- Facts about this database file. `generation` is drawn once, when the file is created: the
-- consumer group id includes it, so a new (empty) file is a new group that replays every
-- topic from the beginning, and a kept file resumes where it left off.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('generation', lower(hex(randomblob(16))));

-- Timestamps are milliseconds since the Unix epoch, taken from the events' `occurred_at`,
-- so a rebuild produces the same rows.
CREATE TABLE customers (
    id                    TEXT PRIMARY KEY,
    name                  TEXT,
    credit_limit_cents    INTEGER NOT NULL,
    credit_reserved_cents INTEGER NOT NULL,
    -- `occurred_at` of the events the limit and the reservation came from: events of
    -- customer-events and credit-events arrive in either order, the newer value wins.
    limit_at              INTEGER,
    reserved_at           INTEGER,
    updated_at            INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE orders (
    -- Insertion order, never reused: the stable key of paged listings.
    pos           INTEGER PRIMARY KEY,
    id            TEXT    NOT NULL UNIQUE,
    customer_id   TEXT    NOT NULL,
    customer_name TEXT,
    status        TEXT    NOT NULL,
    total_cents   INTEGER NOT NULL,
    reason        TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX orders_by_customer ON orders (customer_id, pos);
CREATE INDEX orders_by_status ON orders (status, pos);

-- Every change of the read model, numbered: the live feed's ids and its replay log. The
-- oldest rows are trimmed; a client that asks for older ones gets a snapshot instead.
CREATE TABLE changes (
    seq         INTEGER PRIMARY KEY,
    kind        TEXT    NOT NULL,
    customer_id TEXT    NOT NULL,
    order_id    TEXT,
    data        TEXT    NOT NULL
);

-- Events already applied: a redelivered event changes nothing twice. Keyed by the event's
-- time first: event ids are random UUIDs, and random keys would dirty one page of the index
-- per event, where time-ordered keys append to the last few pages.
CREATE TABLE processed_events (
    occurred_at INTEGER NOT NULL,
    -- The 16 bytes of the UUID (the text of an id that is not one).
    event_id    BLOB    NOT NULL,
    PRIMARY KEY (occurred_at, event_id)
) WITHOUT ROWID;
