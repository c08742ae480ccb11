"""otp-agent: an OATH (HOTP/TOTP) second factor whose token secrets are never stored in clear."""

__version__ = "0.1.0"
