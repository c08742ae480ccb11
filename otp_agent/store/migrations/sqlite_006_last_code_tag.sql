-- otp-agent SQLite schema, version 6: last_code_tag, the key backend's tag over the serial and
-- the last accepted code (never the code itself). With it a validation checks the most likely
-- moving factor first, one HMAC instead of the whole window, and still refuses the last
-- accepted code as a replay.
ALTER TABLE tokens ADD COLUMN last_code_tag BLOB
