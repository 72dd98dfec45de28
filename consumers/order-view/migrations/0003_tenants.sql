-- Tenancy: a customer belongs to the tenant its registration named (NULL: none, seen by
-- admins only); its orders and every change about either carry the same tenant, so a
-- tenant's listings, snapshots and feed replays filter on one column instead of a join.
-- Rows from before this migration have no tenant: only admins see them, the safe default.
ALTER TABLE customers ADD COLUMN tenant TEXT;
ALTER TABLE orders ADD COLUMN tenant TEXT;
ALTER TABLE changes ADD COLUMN tenant TEXT;
CREATE INDEX orders_by_tenant ON orders (tenant, pos);
CREATE INDEX customers_by_tenant ON customers (tenant, id);
