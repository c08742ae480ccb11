-- otp-agent SQLite schema, version 4: self-service enrollment (a token stays pending, letting
-- nobody in, until its owner confirms it with a code, or until pending_until passes and it is
-- removed), and backup codes (single use, per user, stored only as salted scrypt digests, each row
-- bound to its owner by the key backend's tag, and used_at records the one use).
ALTER TABLE tokens ADD COLUMN pending_until REAL;
CREATE TABLE backup_codes (
    user_name TEXT NOT NULL,
    digest    BLOB NOT NULL,
    salt      BLOB NOT NULL,
    scheme    TEXT NOT NULL,
    kind      TEXT NOT NULL CHECK (kind IN ('generated', 'scratch')),
    created   REAL NOT NULL,
    used_at   REAL,
    binding   BLOB NOT NULL,
    PRIMARY KEY (user_name, digest)
)
