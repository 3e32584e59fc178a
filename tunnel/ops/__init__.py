"""Operator commands: the `fluidity` CLI and what it runs (doctor, cost, start/stop/status, install-service)."""
