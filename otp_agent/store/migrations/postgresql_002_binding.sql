-- otp-agent PostgreSQL schema, version 2 (the columns of sqlite_002_binding.sql).
ALTER TABLE tokens ADD COLUMN binding BYTEA;
ALTER TABLE tokens ADD COLUMN failures_at DOUBLE PRECISION NOT NULL DEFAULT 0
