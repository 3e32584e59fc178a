"""`twistd fluidity-agent`: the module ServiceMaker points at."""

from tunnel.taps import AgentOptions as Options
from tunnel.taps import make_agent as makeService

__all__ = ["Options", "makeService"]
