"""The agent: the local proxy fronts, its opener (streams through the tunnel), the tunnel
client, the lifecycle client."""
