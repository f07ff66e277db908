-- The schema this example starts from: 1.x reads and writes users.fullname.
CREATE TABLE users (
    id       bigserial PRIMARY KEY,
    email    text NOT NULL,
    fullname text
);
INSERT INTO users (email, fullname) VALUES ('ada@example.com', 'Ada Lovelace'), ('alan@example.com', 'Alan Turing');
