-- otp-agent SQLite schema, version 5: remembered hosts (policy.remember_seconds). After an
-- accepted code, the user coming again from the same remote host through the same PAM service
-- is let through without a code until "until". Each row is bound to its key by the key
-- backend's tag, so a store writer cannot remember a host of their own.
CREATE TABLE remembered (
    user_name TEXT NOT NULL,
    rhost     TEXT NOT NULL,
    service   TEXT NOT NULL,
    until     REAL NOT NULL,
    binding   BLOB NOT NULL,
    PRIMARY KEY (user_name, rhost, service)
)
