"""Shell completion for `fluidity`, generated from the CLI itself and run in a real bash."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from support import FLUIDITY

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)


def complete(script: str, *words: str) -> list[str]:
    """What bash offers after typing `words` (the last one partial) with the script loaded."""
    line = " ".join(words)
    probe = (
        script
        + f"\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _fluidity; printf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
    )
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", probe], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.fixture(scope="module")
def bash_script() -> str:
    done = subprocess.run([FLUIDITY, "completion", "bash"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_commands_subcommands_and_flags(bash_script):
    assert complete(bash_script, "fluidity", "st") == ["start", "status", "stop"]
    assert complete(bash_script, "fluidity", "certs", "i") == ["init"]
    assert complete(bash_script, "fluidity", "cost", "--h") == ["--help", "--hours-per-month"]
    assert "--allow-ip" in complete(bash_script, "fluidity", "start", "--a")
    assert complete(bash_script, "fluidity", "cost", "--stack", "Pulumi.dev.yaml", "--ag") == [
        "--agents"
    ]  # a flag's value is skipped


def test_zsh_uses_the_same_completion():
    done = subprocess.run([FLUIDITY, "completion", "zsh"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "autoload -U +X bashcompinit && bashcompinit\n" in done.stdout
    assert "complete -F _fluidity fluidity" in done.stdout
    if not shutil.which("zsh"):
        assert not os.environ.get("CI"), "CI installs zsh (.ci/run)"
        return
    loaded = subprocess.run(["zsh", "-f", "-c", done.stdout + "\nprint ok"], capture_output=True, text=True, timeout=30)
    assert loaded.returncode == 0 and loaded.stdout.strip().endswith("ok") and not loaded.stderr, loaded.stderr


def test_below_agent_and_server_come_their_service_commands_and_twistd_flags(bash_script):
    assert complete(bash_script, "fluidity", "agent", "ins") == ["install-service"]
    assert complete(bash_script, "fluidity", "agent", "install-service", "--n") == ["--no-start"]
    assert "--upstream-proxy" in complete(bash_script, "fluidity", "agent", "--up")
    assert "--proxy-port" in complete(bash_script, "fluidity", "agent", "--pro")
    assert "--egress-allow" in complete(bash_script, "fluidity", "server", "--eg")
    assert "install-service" not in complete(bash_script, "fluidity", "server", "")


def fish_complete(script_path, line: str) -> list[str]:
    """What a real fish offers for `line` (its `complete -C`), the script sourced."""
    done = subprocess.run(
        ["fish", "--no-config", "-c", f"source {script_path}; complete -C '{line}'"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return [entry.split("\t")[0] for entry in done.stdout.splitlines()]


def test_fish_completes_the_same_tree(tmp_path):
    assert shutil.which("fish"), "fish is needed (scripts/install-test-tools installs it)"
    done = subprocess.run([FLUIDITY, "completion", "fish"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    script = tmp_path / "fluidity.fish"
    script.write_text(done.stdout)
    assert fish_complete(script, "fluidity st") == ["start", "status", "stop"]
    assert fish_complete(script, "fluidity certs i") == ["init"]
    assert fish_complete(script, "fluidity agent install-service --n") == ["--no-start"]
    assert "--upstream-proxy" in fish_complete(script, "fluidity agent --up")
    assert fish_complete(script, "fluidity cost --stack Pulumi.dev.yaml --ag") == ["--agents"]


def test_agent_help_names_the_service_commands_and_the_flags():
    for role in ("agent", "server"):
        done = subprocess.run([FLUIDITY, role, "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done
        assert f"usage: fluidity {role}" in done.stdout and "--config" in done.stdout, done.stdout
        assert ("install-service" in done.stdout) == (role == "agent"), done.stdout
        assert ("--upstream-proxy" if role == "agent" else "--egress-allow") in done.stdout, done.stdout


def test_every_command_of_the_parser_has_what_runs_it():
    """The parser and the dispatch live apart (`cli_parser`, `cli.RUNS`): a command added to one
    and not the other would parse and then fail."""
    import argparse

    from tunnel.ops.cli import RUNS
    from tunnel.ops.cli_parser import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) - {"agent", "server"} == set(RUNS)  # those two are twistd's, handed over in _main
