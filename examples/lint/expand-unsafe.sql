-- Mixes expand and contract: refused in expand.
ALTER TABLE users ADD COLUMN email_verified boolean;

ALTER TABLE users DROP COLUMN legacy_flag;
ALTER TABLE users RENAME COLUMN email TO email_address;
ALTER TABLE orders
    ALTER COLUMN total TYPE numeric(12, 2);
CREATE INDEX orders_created ON orders (created_at);
