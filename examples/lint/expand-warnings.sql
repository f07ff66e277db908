-- Compatible, but lock-heavy: warnings in expand (refused with --strict).
ALTER TABLE users ADD COLUMN last_seen timestamptz;
CREATE INDEX users_last_seen ON users (last_seen);
ALTER TABLE orders ADD CONSTRAINT orders_total_positive CHECK (total >= 0);
