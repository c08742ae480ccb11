"""otp-radiusd: a RADIUS (RFC 2865) front end to the local agent, for NASes, VPNs and proxies.

:mod:`~otp_agent.radius.config` reads the ``[radius]`` table of agent.toml,
:mod:`~otp_agent.radius.clients` the clients file (NAS addresses and shared secrets) and the
rate limits, :mod:`~otp_agent.radius.server` serves UDP and asks the agent, and
:mod:`~otp_agent.radius.main` is the command line and the process (signals, sd_notify, logging).
"""
