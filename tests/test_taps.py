"""twistd runs both roles from the installed package and refuses bad set-ups in one line."""

from __future__ import annotations

import os
import socket
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml
from support import FLUIDITY, TWISTD, agent_config, free_port, server_config

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)

ROOT = Path(__file__).resolve().parent.parent


def _twistd(role: str, config: dict, tmp_path, *args: str, env=None) -> subprocess.CompletedProcess:
    path = tmp_path / f"{role}.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", f"fluidity-{role}", "--config", str(path), *args],
        capture_output=True,
        timeout=30,
        cwd=tmp_path,
        env=env,
    )


def test_twistd_lists_both_plugins(tmp_path):
    done = subprocess.run([TWISTD, "--help"], capture_output=True, timeout=30, cwd=tmp_path)
    assert b"fluidity-server" in done.stdout and b"fluidity-agent" in done.stdout


def test_wheel_installs_the_dropin_into_twisted_plugins(tmp_path):
    done = subprocess.run(
        [
            str(Path(TWISTD).with_name("python")),
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    wheel = next(tmp_path.glob("fluidity-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/fluidity_plugins.py" in names
    assert "twisted/plugins/__init__.py" not in names  # must not shadow Twisted's own package
    assert "tunnel/taps_server.py" in names and "tunnel/taps_agent.py" in names


def test_missing_certificate_is_one_clear_line(certs, tmp_path):
    config = server_config(certs, cert_file=str(tmp_path / "nope.pem"))
    done = _twistd("server", config, tmp_path)
    assert done.returncode != 0
    lines = done.stderr.decode().strip().splitlines()
    assert lines == [
        f"fluidity-server: cert_file: no such file {tmp_path / 'nope.pem'} (run `fluidity certs init` to make a dev "
        f"set)"
    ]


def test_agent_missing_key_file(certs, tmp_path):
    done = _twistd("agent", agent_config(certs, 1, key_file="/nonexistent/k.key"), tmp_path)
    assert done.returncode != 0
    assert (
        done.stderr.decode().strip()
        == "fluidity-agent: key_file: no such file /nonexistent/k.key (run `fluidity certs init` to make a dev set)"
    )


def test_unknown_key_and_bad_flag(certs, tmp_path):
    config = server_config(certs)
    config["max_conections"] = 3
    done = _twistd("server", config, tmp_path)
    assert done.returncode != 0
    assert b"unknown key 'max_conections' (did you mean 'max_connections'?)" in done.stderr
    done = _twistd("server", server_config(certs), tmp_path, "--port", "https")
    assert done.returncode != 0
    assert b"'port' (--port): expected a whole number" in done.stderr


def test_key_that_does_not_match_its_certificate(certs, tmp_path):
    done = _twistd("server", server_config(certs, key_file=certs.path("client.key")), tmp_path)
    assert done.returncode != 0
    assert b"do not match" in done.stderr


def test_group_readable_key_is_refused(certs, tmp_path):
    key = tmp_path / "open.key"
    key.write_bytes(Path(certs.path("server.key")).read_bytes())
    key.chmod(0o644)
    done = _twistd("server", server_config(certs, key_file=str(key)), tmp_path)
    assert done.returncode != 0
    assert b"readable by others" in done.stderr


def test_certificates_from_environment(certs, tmp_path):
    env = dict(os.environ)
    env.update(
        FLUIDITY_SERVER_CERT=Path(certs.path("server.pem")).read_text(),
        FLUIDITY_SERVER_KEY=Path(certs.path("server.key")).read_text(),
        FLUIDITY_CA_CERT=Path(certs.path("ca.pem")).read_text(),
    )
    config = server_config(
        certs, cert_file="env:FLUIDITY_SERVER_CERT", key_file="env:FLUIDITY_SERVER_KEY", ca_file="env:FLUIDITY_CA_CERT"
    )
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "fluidity-server", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env=env,
    )
    try:
        from support import wait_for_port

        wait_for_port(config["port"], process=process)
        # An answer (a bad handshake closed) means the reactor runs, so its SIGTERM handler is
        # in place: a signal between listening and running would end it the default way.
        with socket.create_connection(("127.0.0.1", config["port"]), timeout=10) as probe:
            probe.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not TLS: refused and closed at once
            try:
                probe.recv(1024)
            except OSError:
                pass
    finally:
        process.terminate()
        out = process.communicate(timeout=30)[0]
    assert process.returncode == 0, out
    del env["FLUIDITY_CA_CERT"]
    done = _twistd("server", config, tmp_path, env=env)
    assert (
        done.stderr.decode().strip()
        == "fluidity-server: ca_file: environment variable FLUIDITY_CA_CERT is not set or empty"
    )


def test_busy_port_is_a_clear_error(certs, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        done = _twistd("agent", agent_config(certs, free_port(), proxy_port=port), tmp_path)
    assert done.returncode != 0
    assert (
        f"cannot listen for local proxy on 127.0.0.1:{port}: [Errno 98] Address already in use".encode()
        in done.stdout + done.stderr
    )


def test_json_log_format(certs, tmp_path):
    import json

    config = server_config(certs, log_format="json", log_level="info")
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "fluidity-server", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    from support import wait_for_port

    try:
        wait_for_port(config["port"], process=process)
    finally:
        process.terminate()
        out = process.communicate(timeout=30)[0].decode()
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert any(r["message"].startswith("tunnel (TLS) listening on 127.0.0.1:") for r in records)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


@pytest.mark.parametrize("signals", [("SIGTERM",), ("SIGINT",), ("SIGTERM", "SIGTERM")])
def test_a_requested_stop_exits_zero_with_no_error(certs, tmp_path, signals):
    """ECS and docker send SIGTERM, Ctrl-C is SIGINT, an impatient operator sends two:
    each ends the server cleanly with status 0, not by re-raising the signal."""
    import signal

    from support import wait_for_port

    config = server_config(certs)
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "fluidity-server", "--config", str(path), "--log-level", "info"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        wait_for_port(config["port"], process=process)
        with socket.create_connection(("127.0.0.1", config["port"]), timeout=10) as probe:
            probe.sendall(b"GET / HTTP/1.0\r\n\r\n")  # an answer means the reactor runs
            try:
                probe.recv(1024)
            except OSError:
                pass
        for name in signals:
            process.send_signal(getattr(signal, name))
        out = process.communicate(timeout=30)[0].decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 0, out
    assert f"Received {signals[0]}, shutting down." in out, out
    assert "Traceback" not in out and "Unhandled" not in out, out


@pytest.mark.parametrize(
    "role, typo, meant", [("agent", "--sever-ip", "--server-ip"), ("server", "--max-conections", "--max-connections")]
)
def test_a_mistyped_flag_is_one_line_with_a_suggestion(role, typo, meant):
    done = subprocess.run([TWISTD, "-n", f"fluidity-{role}", typo, "1"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and f"did you mean {meant}?" in lines[0], lines


def test_version_everywhere():
    done = subprocess.run([FLUIDITY, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("fluidity 0.")
    for role in ("agent", "server"):
        done = subprocess.run([TWISTD, f"fluidity-{role}", "--version"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and f"fluidity-{role} 0." in done.stdout


def test_a_mistyped_command_or_flag_of_fluidity_is_one_line():
    done = subprocess.run([FLUIDITY, "stauts"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "did you mean status?" in done.stderr
    done = subprocess.run(
        [FLUIDITY, "cost", "--hours", "3", "--agnets", "2"], capture_output=True, text=True, timeout=60
    )
    assert (
        done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "did you mean --agents?" in done.stderr
    ), done.stderr


def test_fluidity_agent_and_server_run_the_same_services_as_twistd(certs, tmp_path):
    """`fluidity server` / `fluidity agent` with the twistd flags, no twistd knowledge needed."""
    from support import Proc, wait_connected, wait_for_port

    procs = []
    try:
        for role, config in (("server", server_config(certs)), ("agent", None)):
            if role == "agent":
                config = agent_config(certs, procs[0].port)
            path = tmp_path / f"{role}.yaml"
            path.write_text(yaml.safe_dump(config))
            log = tmp_path / f"{role}.log"
            port = config["port"] if role == "server" else config["proxy_port"]
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    [FLUIDITY, role, "--config", str(path), "--log-level", "info"], stdout=out, stderr=subprocess.STDOUT
                )
            procs.append(Proc(role, process, log, port))
            wait_for_port(port, process=process)
        assert wait_connected(procs[1])["connected"]
    finally:
        codes = [p.stop() for p in reversed(procs)]
    assert codes == [0, 0]
    for p in procs:
        p.assert_no_unhandled_errors()  # stop() sent SIGTERM: both exited 0, as under twistd


def test_an_agent_with_no_config_anywhere_says_where_it_looked(tmp_path):
    """Issue 26, item 7: not `defaults: 'server_ip' is required`."""
    env = {k: v for k, v in os.environ.items() if k not in ("FLUIDITY_CONFIG", "XDG_CONFIG_HOME")}
    env["HOME"] = str(tmp_path)
    done = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "fluidity-agent"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert (
        f"{tmp_path}/.config/fluidity/agent.yaml (missing)" in done.stderr
        and "$FLUIDITY_CONFIG (unset)" in done.stderr
        and "--config" in done.stderr
    ), done.stderr
