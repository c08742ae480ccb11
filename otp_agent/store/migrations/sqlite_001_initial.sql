-- otp-agent SQLite schema, version 1.
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
    t0           INTEGER NOT NULL DEFAULT 0,
    sealed       BLOB NOT NULL,
    fingerprint  BLOB NOT NULL UNIQUE,
    counter      INTEGER NOT NULL DEFAULT 0,
    last_step    INTEGER,
    drift        INTEGER NOT NULL DEFAULT 0,
    enabled      INTEGER NOT NULL DEFAULT 1,
    failures     INTEGER NOT NULL DEFAULT 0,
    lock_count   INTEGER NOT NULL DEFAULT 0,
    locked_until REAL NOT NULL DEFAULT 0,
    issuer       TEXT,
    not_before   REAL,
    not_after    REAL,
    created      REAL NOT NULL,
    version      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tokens_by_user ON tokens (user_name);
