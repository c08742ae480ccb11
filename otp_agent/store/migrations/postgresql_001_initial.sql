-- otp-agent PostgreSQL schema, version 1 (the columns of sqlite_001_initial.sql).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE tokens (
    serial       TEXT PRIMARY KEY,
    user_name    TEXT,
    token_type   TEXT NOT NULL CHECK (token_type IN ('hotp', 'totp')),
    algorithm    TEXT NOT NULL CHECK (algorithm IN ('sha1', 'sha256', 'sha512')),
    digits       INTEGER NOT NULL CHECK (digits IN (6, 8)),
    period       INTEGER NOT NULL CHECK (period > 0),
    t0           BIGINT NOT NULL DEFAULT 0,
    sealed       BYTEA NOT NULL,
    fingerprint  BYTEA NOT NULL UNIQUE,
    counter      BIGINT NOT NULL DEFAULT 0,
    last_step    BIGINT,
    drift        INTEGER NOT NULL DEFAULT 0,
    enabled      BOOLEAN NOT NULL DEFAULT TRUE,
    failures     INTEGER NOT NULL DEFAULT 0,
    lock_count   INTEGER NOT NULL DEFAULT 0,
    locked_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    issuer       TEXT,
    not_before   DOUBLE PRECISION,
    not_after    DOUBLE PRECISION,
    created      DOUBLE PRECISION NOT NULL,
    version      BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX tokens_by_user ON tokens (user_name);
