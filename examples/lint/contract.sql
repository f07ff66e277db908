-- Contract for shop-api 2.4.0: runs once no pod of an older version is left.
ALTER TABLE users DROP COLUMN legacy_flag;
ALTER TABLE users ALTER COLUMN email_verified SET NOT NULL;
DROP TABLE signup_tokens;
