"""Shell completion for `fluidity`, generated from the CLI itself and run in a real bash."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from support import FLUIDITY


def complete(script: str, *words: str) -> list[str]:
    """What bash offers after typing `words` (the last one partial) with the script loaded."""
    line = " ".join(words)
    probe = script + f"\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _fluidity; printf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
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
    assert complete(bash_script, "fluidity", "cost", "--stack", "Pulumi.dev.yaml", "--ag") == ["--agents"]  # a flag's value is skipped


def test_zsh_uses_the_same_completion():
    done = subprocess.run([FLUIDITY, "completion", "zsh"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "autoload -U +X bashcompinit && bashcompinit\n" in done.stdout
    assert "complete -F _fluidity fluidity" in done.stdout
    if not shutil.which("zsh"):
        assert not os.environ.get("CI"), "CI installs zsh (.ci/run)"
        return
    loaded = subprocess.run(["zsh", "-f", "-c", done.stdout + "\nprint ok"], capture_output=True, text=True, timeout=30)
    assert loaded.returncode == 0 and loaded.stdout.strip().endswith("ok") and not loaded.stderr, loaded.stderr
