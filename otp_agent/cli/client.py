"""``otpctl``'s agent client is the documented one, :mod:`otp_agent.client` (kept importable here)."""

from __future__ import annotations

from otp_agent.client import AgentClient

__all__ = ["AgentClient"]
