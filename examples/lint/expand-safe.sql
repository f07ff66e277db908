-- Expand for shop-api 2.4.0: only additive, backward-compatible changes.
ALTER TABLE users ADD COLUMN email_verified boolean;
ALTER TABLE users ADD COLUMN status text NOT NULL DEFAULT 'active';

CREATE TABLE login_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id),
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_events_user ON login_events (user_id);  -- new table: safe

CREATE INDEX CONCURRENTLY users_email_verified ON users (email_verified);
ALTER TABLE orders ADD CONSTRAINT orders_user_fk
    FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;
ALTER TABLE orders VALIDATE CONSTRAINT orders_user_fk;
COMMENT ON COLUMN users.email_verified IS 'set by the 2.4.0 signup flow';
