"""Every setting the code accepts is documented once, in docs/configuration.md: each key
of the server and the agent (tunnel/config.py), of the server's `metrics:` block, and of
the stack (deployment/stack_settings.py and the three certificate secrets). The performance figures
of the README and docs/performance.md are those of the run `bench/results.md` holds."""

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


# -- performance figures: the README's table and docs/performance.md against bench/results.md ----


def table_rows(text: str, first_cell: str, has: str | None = None) -> dict[str, list[str]]:
    """The rows of the markdown table whose header starts with `first_cell` (and has a cell
    `has`, when given), by first cell, each cell without its bold marks."""
    rows: dict[str, list[str]] = {}
    inside = False
    for line in text.splitlines():
        cells = [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            if inside:
                break
            continue
        if not inside and cells[0] == first_cell and (has is None or has in cells):
            inside = True
        elif inside and not set(cells[0]) <= set("-"):
            rows[cells[0]] = cells[1:]
    assert rows, f"no table starting with {first_cell!r}"
    return rows


def results() -> tuple[str, dict[str, list[str]], dict[str, list[str]], dict[str, list[str]]]:
    """bench/results.md: the date of its run, its CPU-per-GB table, its scenario table and
    its table against the peers (ssh -D, shadowsocks-libev, the stunnel chain)."""
    text = (ROOT / "bench" / "results.md").read_text()
    date = re.match(r"# Fluidity benchmark \((\d{4}-\d\d-\d\d \d\d:\d\d),", text)
    assert date, "bench/results.md names the date of its run"
    peers = table_rows(text, "direction", has="best peer")
    return date.group(1), table_rows(text, "direction"), table_rows(text, "scenario"), peers


def readme_table() -> dict[str, list[str]]:
    section = (ROOT / "README.md").read_text().split("\n## Performance\n", 1)[1].split("\n## ", 1)[0]
    return table_rows(section, "")


def test_the_readmes_performance_table_is_bench_results():
    """Each figure of the README's table, where bench/results.md has it: a run of bench/run
    rewrites results.md, and the README must not keep the figures of another run."""
    date, cpu, scenario, peers = results()
    readme = readme_table()
    head = (ROOT / "README.md").read_text().split("\n## Performance\n", 1)[1].split("\n|", 1)[0]
    assert f"the run of {date}" in " ".join(head.split()), "the README dates its figures with results.md's run"
    # README columns: Fluidity, ssh -D, shadowsocks-libev, stunnel chain, Fluidity / best peer
    for direction in ("download", "upload"):
        agent, server, fluidity = cpu[direction][:3]
        _fluidity, ssh, shadowsocks, chain, best, ratio = peers[direction][:6]
        assert readme[f"CPU seconds per GB, {direction}"][:5] == [
            f"{fluidity} ({agent} + {server})",
            ssh,
            shadowsocks,
            chain,
            f"{ratio} ({best})",
        ], direction
    down, up = scenario["download MB/s"], scenario["upload MB/s"]
    best_down, best_up = peers["download"][11], peers["upload"][11]
    assert readme["MB/s, download / upload"][:5] == [
        f"{down[1]} / {up[1]}",
        f"{down[3]} / {up[3]}",
        f"{down[4]} / {up[4]}",
        f"{down[2]} / {up[2]}",
        f"{best_down.split(' (')[0]} / {best_up.split(' (')[0]}",
    ]
    for mine, theirs in (
        ("new HTTPS connections per second (`hey -c 1`)", "new connections/s (hey -c 1, 15s)"),
        ("CPU ms per new connection", "CPU ms per new connection (the path's processes together)"),
    ):
        row = scenario[theirs]
        assert readme[mine][:5] == [row[1], row[3], row[4], row[2], f"{row[5]} (stunnel chain)"], mine
    trips = scenario["time to first byte, round trips (100 ms RTT)"]
    assert readme["round trips to the first byte of a new connection"][:4] == [trips[1], trips[3], trips[4], trips[2]]


def test_docs_performance_tables_are_bench_results():
    """docs/performance.md's three tables hold the same figures as bench/results.md, from the
    run it names."""
    date, cpu, scenario, peers = results()
    page = (ROOT / "docs" / "performance.md").read_text()
    assert f"the run of {date}" in " ".join(page.split()), "docs/performance.md dates its figures"
    page_cpu = table_rows(page, "direction")
    for direction in ("download", "upload"):
        expected = [cell.split(" (")[0] for cell in cpu[direction][:8]]  # "7.38 (-40%)": the figure
        assert page_cpu[direction][:8] == expected, direction
    assert table_rows(page, "direction", has="best peer") == peers
    page_scenario = table_rows(page, "scenario")
    pairs = {
        "1 GiB download MB/s": "download MB/s",
        "1 GiB upload MB/s": "upload MB/s",
        "new HTTPS connections/s (hey -c 1)": "new connections/s (hey -c 1, 15s)",
        "CPU ms per new connection, the path's processes together": (
            "CPU ms per new connection (the path's processes together)"
        ),
    }
    for mine, theirs in pairs.items():
        assert page_scenario[mine][:6] == scenario[theirs][:6], mine
