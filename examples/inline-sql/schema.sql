-- The schema this example starts from (what shop 1.x uses).
CREATE TABLE orders (
    id          bigserial PRIMARY KEY,
    customer_id bigint NOT NULL,
    total_cents bigint NOT NULL,
    status_code int             -- 1.x writes it; 2.0.0 uses order_events instead
);
INSERT INTO orders (customer_id, total_cents, status_code) VALUES (1, 1999, 1), (2, 4500, 2);
