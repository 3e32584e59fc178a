"""A real TLS-intercepting proxy (mitmproxy, from PyPI, in a virtualenv of its own that
.ci/run makes) on loopback, with its own CA, as a corporate inspection proxy would stand."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from support import free_port, stop_process, wait_for_port

MITMDUMP = os.environ.get("FLUIDITY_MITMDUMP", "/opt/fluidity-mitmproxy/bin/mitmdump")


class Mitmproxy:
    def __init__(self) -> None:
        assert os.path.exists(MITMDUMP), (
            f"mitmproxy is needed at {MITMDUMP} (.ci/run installs it: python3 -m venv /opt/fluidity-mitmproxy && "
            f"/opt/fluidity-mitmproxy/bin/pip install mitmproxy)"
        )
        self.folder = Path(tempfile.mkdtemp(prefix="fluidity-mitm-"))
        self.port = free_port()
        self.log = self.folder / "mitmdump.log"
        with open(self.log, "wb") as out:
            # ssl_insecure: it forwards to our server whatever that presents, as inspection boxes do.
            self.process = subprocess.Popen(
                [
                    MITMDUMP,
                    "--listen-host",
                    "127.0.0.1",
                    "--listen-port",
                    str(self.port),
                    "--set",
                    f"confdir={self.folder}",
                    "--set",
                    "ssl_insecure=true",
                    "--flow-detail",
                    "1",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_port(self.port, 30, self.process)
        except Exception:
            self.stop()
            raise RuntimeError(f"mitmdump did not start:\n{self.output()}") from None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.folder, ignore_errors=True)
