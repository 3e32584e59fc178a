"""Secrets are given by where they are (`env:VAR`, `file:PATH`, `keyring`), never typed on a
command line: every user of the machine can read a process's arguments. Tried with the real
`twistd fluidity-agent` and `fluidity` commands; while each runs, its command line is read
back from /proc as another user would read it."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml
from support import FLUIDITY, TWISTD, agent_config

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)

KEY = "k3y-that-must-stay-secret"


@pytest.mark.parametrize(
    "flag, value, refused",
    [
        ("--lifecycle-api-key", KEY, "the secret itself is refused on a command line"),
        ("--upstream-proxy-password", KEY, "the secret itself is refused on a command line"),
        ("--upstream-proxy", f"http://corp:{KEY}@proxy.example:3128", "a password in the URL is refused"),
        ("--upstream-proxy", f"corp:{KEY}@proxy.example:3128", "a password in the URL is refused"),
    ],
)
def test_twistd_refuses_a_secret_given_as_a_flag_and_says_how_to_give_it(certs, tmp_path, flag, value, refused):
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, 8443)))
    done = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "fluidity-agent", "--config", str(path), flag, value],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0 and refused in output and "env:VAR, file:PATH or keyring" in output, output
    assert f"({flag})" in output and KEY not in output and "Traceback" not in output, output
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize(
    "flag, value", [("--lifecycle-api-key", "env:PLANE_KEY"), ("--upstream-proxy", "http://corp@p:1")]
)
def test_twistd_takes_a_flag_that_names_where_the_secret_is(certs, tmp_path, monkeypatch, flag, value):
    """The same flags, given a reference (or a URL without a password), pass the checks."""
    from tunnel.taps_agent import Options

    path = tmp_path / "agent.yaml"
    lifecycle = {"wake_endpoint": "https://plane.example/wake", "api_key": "env:PLANE_KEY"}
    config = agent_config(certs, 8443, lifecycle=lifecycle)
    path.write_text(yaml.safe_dump(config))
    options = Options()
    monkeypatch.setenv("PLANE_KEY", KEY)
    options.parseOptions(["--config", str(path), flag, value])
    assert KEY not in repr(options.config)


@pytest.mark.parametrize("command", [["control-plane", "--port", "1"], ["start", "--allow-ip", "auto"]])
def test_fluidity_refuses_an_api_key_given_as_a_flag(tmp_path, command):
    done = subprocess.run(
        [FLUIDITY, *command, "--status-url", "http://127.0.0.1:1/status", "--api-key", KEY]
        if command[0] == "start"
        else [FLUIDITY, *command, "--api-key", KEY],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", "HOME": str(tmp_path)},
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "--api-key: the secret itself is refused on a command line" in output, output
    assert "env:VAR, file:PATH or keyring" in output and KEY not in output and "Traceback" not in output, output


def test_the_local_control_plane_takes_its_key_from_a_file_and_it_never_shows_in_the_process_list(tmp_path):
    import urllib.error
    import urllib.request

    from support import free_port, wait_for_port

    (tmp_path / "key").write_text(KEY + "\n")
    port = free_port()
    process = subprocess.Popen(
        [FLUIDITY, "control-plane", "--api-key", f"file:{tmp_path / 'key'}", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "AWS_REGION": "us-east-1"},
    )
    try:
        wait_for_port(port, process=process)
        with open(f"/proc/{process.pid}/cmdline", "rb") as cmdline:
            seen = cmdline.read().replace(b"\0", b" ").decode()
        assert "control-plane" in seen and KEY not in seen, seen
        for key, expected in ((KEY, 404), ("wrong", 403)):  # the file's key gets past the key check
            request = urllib.request.Request(f"http://127.0.0.1:{port}/nothing", headers={"x-api-key": key})
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10)
            assert answer.value.code == expected
    finally:
        process.terminate()
        process.wait(10)


def test_where_a_secret_is_and_what_it_says_when_it_is_not_there(tmp_path):
    from tunnel.secret_source import SecretUnavailable, api_key_entry, is_reference, resolve

    (tmp_path / "key").write_text(f"  {KEY}\n")
    (tmp_path / "empty").write_text("\n")
    assert resolve(f"file:{tmp_path / 'key'}", "x") == KEY
    assert resolve("env:K", "x", environ={"K": KEY}) == KEY
    assert resolve(KEY, "x") == KEY and not is_reference(KEY)
    assert all(is_reference(s) for s in ("env:K", "file:/k", "keyring", " keyring "))
    for spec, message in (
        (f"file:{tmp_path / 'empty'}", "is empty"),
        (f"file:{tmp_path / 'none'}", "cannot read"),
        ("env:NOT_SET_HERE", "environment variable NOT_SET_HERE is not set or empty"),
    ):
        with pytest.raises(SecretUnavailable, match=message):
            resolve(spec, "lifecycle.api_key", environ={})

    from keyrings.alt.file import PlaintextKeyring

    store = PlaintextKeyring()
    store.file_path = str(tmp_path / "keyring.cfg")  # a real file backend of this test's own
    with pytest.raises(SecretUnavailable, match=r"keyring set fluidity-control-plane plane\.example"):
        resolve("keyring", "lifecycle.api_key", api_key_entry("plane.example"), keyring_module=store)
    store.set_password("fluidity-control-plane", "plane.example", KEY)
    assert resolve("keyring", "lifecycle.api_key", api_key_entry("plane.example"), keyring_module=store) == KEY
