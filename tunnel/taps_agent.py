"""`twistd fluidity-agent`: the module ServiceMaker points at."""

from .taps import AgentOptions as Options
from .taps import make_agent as makeService

__all__ = ["Options", "makeService"]
