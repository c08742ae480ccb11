"""The otp-agent daemon: composition root, socket server, request dispatch, systemd glue."""
