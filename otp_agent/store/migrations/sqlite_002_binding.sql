-- otp-agent SQLite schema, version 2: the key backend's binding tag over each token's owner and
-- parameters, and the time the failure count last changed (failures decay instead of resetting).
ALTER TABLE tokens ADD COLUMN binding BLOB;
ALTER TABLE tokens ADD COLUMN failures_at REAL NOT NULL DEFAULT 0
