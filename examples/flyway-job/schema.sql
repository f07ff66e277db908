-- The schema this example starts from (Flyway baseline 2.0, what shop 1.x uses).
CREATE TABLE products (
    id        bigserial PRIMARY KEY,
    name      text NOT NULL,
    permalink text             -- 1.x builds URLs from it; 2.1 uses slug
);
