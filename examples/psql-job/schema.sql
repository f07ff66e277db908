-- The schema this example starts from (what shop-api 1.x uses).
CREATE TABLE users (
    id          bigserial PRIMARY KEY,
    email       text NOT NULL,
    legacy_flag boolean          -- read by 1.x only
);
INSERT INTO users (email, legacy_flag) VALUES ('a@example.com', true), ('b@example.com', false);
