"""The server's CloudWatch metric names, defined once: the server publishes them
(`tunnel/server/metrics.py`), the sleep Lambda reads them, the dashboard shows them."""

ACTIVE_CONNECTIONS = "ActiveConnections"  # agents connected now (dimension ServiceName, and Agent per identity)
BYTES_SENT = "BytesSentToAgents"  # stream payload sent to agents since the last publication: data transfer out
LAST_ACTIVITY = "LastActivityEpochSeconds"  # when an agent last sent a byte, connected or opened a stream
CONTROL_PLANE_ERRORS = "ControlPlaneErrors"  # the Lambdas' error lines and the API's 5xx, by metric filter (infra/)
