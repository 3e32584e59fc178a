"""Clients that cancel on a real round trip (issue 39, item 1): the tunnel stays up.

`bench/resets.py` runs in a network namespace of its own (`unshare -n`: only a loopback)
with a 40 ms delaying relay on the tunnel's hop and nftables dropping 1% of its packets.
Clients cancel streams within a round trip of opening them (CONNECT, SOCKS5 and
absolute-form), so the server's 200 and bytes arrive for streams the agent already reset,
while other clients carry whole exchanges both ways at once. Before issue 39 the first late
200 after the agent had opened another stream ended the connection (82 teardowns in 30 s).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.processes  # real processes (twistd, a relay, namespaces)

RESETS = Path(__file__).resolve().parent.parent / "bench" / "resets.py"


def test_clients_cancelling_within_a_round_trip_never_drop_the_tunnel_nor_another_stream():
    assert shutil.which("nft"), "nftables is needed (apt-get install nftables; .ci/run installs it)"
    options = ["--rtt-ms", "40", "--loss", "1", "--seconds", "10", "--streams", "16", "--resetters", "8"]
    run = subprocess.run(
        [sys.executable, str(RESETS), "--json", *options],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["resets"] > 200 and result["dropped"] > 0, result  # the cancels and the loss were real
    assert result["teardowns"] == 0 and result["protocol_errors"] == 0, result
    assert result["failed"] == 0 and result["intact"] > 100, result
    print(json.dumps(result))
