"""``otpctl``: the administrator's command line, a client of the agent's socket."""
