"""`fluidity agent status`: the running agent's /status.json, in lines."""

from __future__ import annotations

import sys


def _agent_status(args) -> int:
    """`fluidity agent status`: what the local agent's /status.json says, in lines."""
    import json
    import urllib.request

    from tunnel import config as cfg
    from tunnel.agent.status_page import human_age, human_bytes

    port = args.port
    if port is None:
        path = args.config or cfg.default_agent_config()
        try:
            port = cfg.load(cfg.AGENT_KEYS, path).proxy_port if path else 8080
        except cfg.ConfigError as e:
            print(f"fluidity agent status: {e}", file=sys.stderr)
            return 2
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"http://127.0.0.1:{port}/status.json", timeout=5
        ) as r:
            status = json.load(r)
    except (OSError, ValueError) as e:
        print(
            f"fluidity agent status: no agent answers on 127.0.0.1:{port} ({getattr(e, 'reason', e)}); start it with "
            f"`fluidity agent`",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    up = status["connected"]
    received, sent = status["traffic"]
    down, up_rate = status["rate"]
    print(
        f"tunnel:  {'up' if up else 'down'}"
        + (
            f" for {human_age(status['tunnel_uptime'] or 0)}, to {status['server']}"
            if up
            else f" (server {status['server']})"
        )
    )
    if status.get("server_dns_name"):
        print(f"         the server's name: {status['server_dns_name']}")
    print(f"server:  {status['server_state'] or 'no control plane configured'}")
    print(
        f"streams: {status['open_streams']} open"
        + "".join(f"\n         {n} to {dest}" for dest, n in list(status["streams_by_destination"].items())[:10])
    )
    print(
        f"bytes:   {human_bytes(received)} received, {human_bytes(sent)} sent; now {human_bytes(down)}/s down, "
        f"{human_bytes(up_rate)}/s up"
    )
    print(f"error:   {status['last_error'] or 'none'}")
    print(f"page:    http://127.0.0.1:{port}/")
    return 0 if up else 1
