"""A middlebox that forgets the tunnel's flow (issue 25, item 7): noticed within the probe
timeout, replaced, and a client that waited for the server's answer is served on the new
connection.

`bench/forgotten_flow.py` runs in a network namespace of its own (`unshare -n`) with
nftables dropping both directions of the agent's one tunnel connection, silently, as a
flushed NAT or firewall table does. Keepalives there are 30 s / 20 s, so without the probe
the first client would wait up to 50 s and get a 502.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)

BENCH = Path(__file__).resolve().parent.parent / "bench" / "forgotten_flow.py"


def test_a_forgotten_flow_is_replaced_before_a_client_waits_long():
    assert shutil.which("nft"), "nftables is needed (apt-get install nftables; .ci/run installs it)"
    run = subprocess.run([sys.executable, str(BENCH), "--json"], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    new, known = result["new_destination"], result["known_destination"]
    # Waiting for the answer, the client lost nothing: its stream went again on the new connection.
    assert new["got"] == "ok" and new["seconds"] < 15, result
    # Told "connected" at once, its bytes were in the dead connection: a reset, soon, not a hang ...
    assert "reset" in known["got"] and known["seconds"] < 15, result
    # ... and asking again works at once.
    assert known["again_got"] == "ok" and known["again_seconds"] < 5, result
    assert result["reconnects"] == 2, result
    print(json.dumps(result))
