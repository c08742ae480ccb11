-- otp-agent PostgreSQL schema, version 3 (the columns of sqlite_003_oob.sql).
ALTER TABLE tokens DROP CONSTRAINT tokens_token_type_check;
ALTER TABLE tokens ADD CONSTRAINT tokens_token_type_check CHECK (token_type IN ('hotp', 'totp', 'oob'));
ALTER TABLE tokens ADD COLUMN channel TEXT;
ALTER TABLE tokens ADD COLUMN address TEXT;
ALTER TABLE tokens ADD COLUMN sends TEXT NOT NULL DEFAULT ''
