"""The payShield 9000/10K key backend.

Token secrets are held as key blocks under the HSM's LMK and every HMAC is computed by the HSM
(host command LQ).  Modules: ``codec`` (pure host-command layouts), ``keyblock`` (key-block
headers), ``errors`` (error-code table and exceptions), ``connection`` and ``transport`` (TCP,
TLS, pipelining, failover), ``hosts`` (per-HSM state and back-off), ``selftest`` (the
known-answer self-test), ``config`` (``[keystore.payshield]``), ``backend`` (the KeyBackend).
``fields`` (framing, field walking) and ``transit`` (the ZMK wrapping for LU import) complete it.
Import the backend from ``otp_agent.keystore.payshield.backend``; this package imports nothing.
"""
