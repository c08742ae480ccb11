-- otp-agent PostgreSQL schema, version 5 (the table of sqlite_005_remembered.sql):
-- remembered hosts. After an accepted code, the user coming again from the same remote host
-- through the same PAM service is let through without a code until "until". Each row is bound
-- to its key by the key backend's tag, so a store writer cannot remember a host of their own.
CREATE TABLE remembered (
    user_name TEXT NOT NULL,
    rhost     TEXT NOT NULL,
    service   TEXT NOT NULL,
    until     DOUBLE PRECISION NOT NULL,
    binding   BYTEA NOT NULL,
    PRIMARY KEY (user_name, rhost, service)
)
