"""Every setting the code accepts is documented once, in docs/configuration.md: each key
of the server and the agent (tunnel/config.py), of the server's `metrics:` block, and of
the stack (deployment/stack_settings.py and the three certificate secrets)."""

from __future__ import annotations

import re
from pathlib import Path

from tunnel import config as cfg

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "configuration.md"


def documented(heading: str) -> list[str]:
    """The key names in the first column of the table under `## heading`, each as often as
    it is written (`a` / `b`, `c.d`, `e`: a dotted first name prefixes the bare ones after it)."""
    section = PAGE.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    names = []
    for line in section.splitlines():
        cells = line.split("|")
        if len(cells) < 3 or not cells[1].strip().startswith("`"):
            continue
        prefix = ""
        for name in re.findall(r"`([\w.]+)`", cells[1]):
            if "." in name:
                prefix = name.rsplit(".", 1)[0] + "."
                names.append(name)
            else:
                names.append(prefix + name)
    return names


def stack_keys() -> set[str]:
    source = (ROOT / "deployment" / "stack_settings.py").read_text()
    found = set(re.findall(r"\(config, \"(\w+)\"", source)) - {"get_object"} | set(
        re.findall(r'config\.get(?:_object)?\("(\w+)"\)', source)
    )
    from infra.program import CERT_PATHS

    return found | set(CERT_PATHS)  # the three secrets, read by infra/program.py


def once(names: list[str], wanted: set[str]) -> None:
    missing = sorted(wanted - set(names))
    twice = sorted({n for n in names if names.count(n) > 1})
    unknown = sorted(set(names) - wanted)
    assert not missing and not twice and not unknown, f"missing {missing}, written twice {twice}, not a key {unknown}"


BOTH = "Keys of both the server and the agent"


def test_every_server_key_once():
    keys = {k.name for k in cfg.SERVER_KEYS if not k.name.startswith("metrics.")}
    once(documented("Server keys") + documented(BOTH), keys)


def test_every_metrics_key_once():
    keys = {k.name for k in cfg.SERVER_KEYS if k.name.startswith("metrics.")}
    once(["metrics." + n for n in documented("Server metrics keys (`metrics:`)")], keys)


def test_every_agent_key_once():
    once(documented("Agent keys") + documented(BOTH), {k.name for k in cfg.AGENT_KEYS})


def test_every_stack_key_once():
    wanted = stack_keys()
    assert {"serverCert", "serverKey", "caCert", "cpu", "monitoring"} <= wanted, wanted  # the scan found them
    once(documented("Stack keys (`fluidity:`)"), wanted)
