"""Fluidity on AWS: `pulumi up` builds it all; `pulumi config set desiredCount 1 && pulumi up` starts the server."""

from infra.program import run

run()
