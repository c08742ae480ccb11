-- otp-agent PostgreSQL schema, version 6 (the column of sqlite_006_last_code_tag.sql).
ALTER TABLE tokens ADD COLUMN last_code_tag BYTEA
