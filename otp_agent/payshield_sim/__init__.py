"""payshield-sim: a payShield 9000/10K host-command simulator for tests, demos and benchmarks.

It speaks the real wire format (2-byte length, echoed header, response code, error code) and
implements NC, NO, B2, N0, L0, LQ, LS, LU and A0 with an AES LMK loaded from a file.  It holds
no real key material and must never be used to protect production secrets.
"""
