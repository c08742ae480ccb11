-- otp-agent PostgreSQL schema, version 4 (the columns of sqlite_004_recovery.sql).
ALTER TABLE tokens ADD COLUMN pending_until DOUBLE PRECISION;
CREATE TABLE backup_codes (
    user_name TEXT NOT NULL,
    digest    BYTEA NOT NULL,
    salt      BYTEA NOT NULL,
    scheme    TEXT NOT NULL,
    kind      TEXT NOT NULL CHECK (kind IN ('generated', 'scratch')),
    created   DOUBLE PRECISION NOT NULL,
    used_at   DOUBLE PRECISION,
    binding   BYTEA NOT NULL,
    PRIMARY KEY (user_name, digest)
)
