"""`twistd fluidity-server`: the module ServiceMaker points at."""

from tunnel.taps import ServerOptions as Options
from tunnel.taps import make_server as makeService

__all__ = ["Options", "makeService"]
