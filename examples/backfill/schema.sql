-- The schema this example starts from (what shop 1.x uses): users.email.
CREATE TABLE users (
    id    bigserial PRIMARY KEY,
    email text NOT NULL
);
INSERT INTO users (email) SELECT 'user' || g || '@example.com' FROM generate_series(1, 5000) g;
