-- otp-agent SQLite schema, version 3: out-of-band tokens (type 'oob'), their channel and
-- address, and the record of their recent sends ("COUNTER:TIME:OUTCOME" items, never a code).
-- SQLite cannot change a CHECK constraint in place, so the table is rebuilt.
CREATE TABLE tokens_v3 (
    serial       TEXT PRIMARY KEY,
    user_name    TEXT,
    token_type   TEXT NOT NULL CHECK (token_type IN ('hotp', 'totp', 'oob')),
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
    version      INTEGER NOT NULL DEFAULT 0,
    binding      BLOB,
    failures_at  REAL NOT NULL DEFAULT 0,
    channel      TEXT,
    address      TEXT,
    sends        TEXT NOT NULL DEFAULT ''
);
INSERT INTO tokens_v3 (serial, user_name, token_type, algorithm, digits, period, t0, sealed,
    fingerprint, counter, last_step, drift, enabled, failures, lock_count, locked_until, issuer,
    not_before, not_after, created, version, binding, failures_at)
SELECT serial, user_name, token_type, algorithm, digits, period, t0, sealed, fingerprint, counter,
    last_step, drift, enabled, failures, lock_count, locked_until, issuer, not_before, not_after,
    created, version, binding, failures_at FROM tokens;
DROP TABLE tokens;
ALTER TABLE tokens_v3 RENAME TO tokens;
CREATE INDEX tokens_by_user ON tokens (user_name)
