"""Packet loss on the tunnel's hop (issue 24, item 4): every stream finishes, intact.

`bench/loss.py` runs in a network namespace of its own (`unshare -n`: only a loopback,
nothing leaves the machine) with nftables dropping 3% of the segments to and from the
server's port, both directions. The benchmark prints throughput against one plain TCP
connection on the same lossy path; this test holds only what must never fail: no stream
stalls, none is corrupted, and the tunnel is never dropped for it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)

LOSS = Path(__file__).resolve().parent.parent / "bench" / "loss.py"


@pytest.mark.parametrize("direction", ["down", "up"])
def test_every_stream_finishes_intact_with_3_percent_loss(direction):
    assert shutil.which("nft"), "nftables is needed (apt-get install nftables; .ci/run installs it)"
    run = subprocess.run(
        [
            sys.executable,
            str(LOSS),
            "--json",
            "--loss",
            "3",
            "--streams",
            "20",
            "--mb",
            "4",
            "--seconds",
            "60",
            "--direction",
            direction,
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    tunnel = result["tunnel"]
    assert tunnel["dropped"] > 0.01 * tunnel["packets"], result  # the loss was real
    assert tunnel["finished"] == tunnel["streams"] == 20, json.dumps(tunnel)  # whole: where each stuck stream stopped
    assert result["reconnects"] == 0, result
    print(json.dumps(result))
