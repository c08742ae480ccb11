"""The project's own fault suite: bounded, repeatable fault runs that print their figures.

``OTP_FAULTS=long`` selects the long mode (campaign-sized counts); the default short mode runs
in CI with the rest of pytest.  See tests/faults/support.py and docs/benchmarks.md.
"""
