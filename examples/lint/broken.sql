ALTER TABLE users ADD COLUMN email_verified boolean;
ALTER TABLE users
    DROPP COLUMN legacy_flag;
