"""`twistd fluidity-server`: the module ServiceMaker points at."""

from .taps import ServerOptions as Options
from .taps import make_server as makeService

__all__ = ["Options", "makeService"]
