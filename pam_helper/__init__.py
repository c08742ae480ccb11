"""The PAM helper run by ``pam_exec.so``: asks the otp-agent daemon whether a login may proceed.

This package owns only the client side of one validation request.  It imports nothing but the
standard library (and no ``otp_agent`` module), so that it starts fast and stays small; all
decisions are taken by the daemon.  The program itself is :mod:`pam_helper.__main__`.
"""
