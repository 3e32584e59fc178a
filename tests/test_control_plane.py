"""`fluidity control-plane`: the Lambda handlers behind a local HTTP front, over moto."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest
from aws import ControlPlaneProc
from support import FLUIDITY, curl

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)


@pytest.fixture
def plane(aws, tmp_path):
    proc = ControlPlaneProc(aws, tmp_path)
    yield proc
    proc.stop()


def request(plane, method: str, path: str, key: str | None = "test-api-key", *extra: str) -> tuple[int, dict]:
    headers = ["-H", f"x-api-key: {key}"] if key is not None else []
    result = curl("-X", method, *headers, *extra, "-w", "\n%{http_code}", f"{plane.url}{path}")
    body, code = result.stdout.decode().rsplit("\n", 1)
    return int(code), json.loads(body)


def test_wake_status_kill_through_the_front(aws, plane):
    service = aws.make_service(desired=0)
    assert request(plane, "GET", "/status")[1]["status"] == "stopped"
    code, body = request(plane, "POST", "/wake")
    assert (code, body["status"], body["desiredCount"]) == (200, "starting", 1)
    aws.reconcile(service)
    code, body = request(plane, "GET", "/status")
    assert (code, body["status"], body["publicIp"], body["port"]) == (200, "running", "127.0.0.1", 443)
    code, body = request(plane, "POST", "/kill")
    assert (code, body["desiredCount"]) == (200, 0)
    assert aws.desired_count(service) == 0
    log = plane.log()
    assert "POST /wake from 127.0.0.1 -> 200" in log and "test-api-key" not in log  # who called, never the key


def test_served_over_https_as_api_gateway_is(aws, tmp_path):
    """--tls-cert/--tls-key: the same front over TLS; a client that trusts the CA gets in,
    one that does not is refused in the handshake."""
    from tunnel.wire import pki

    ca_cert, ca_key = pki.make_ca("control-plane test CA")
    pki.save(tmp_path, "ca", ca_cert, ca_key, force=True)
    pki.save(
        tmp_path, "plane", *pki.issue(ca_cert, ca_key, "localhost", server=True, dns_names=("localhost",)), force=True
    )
    proc = ControlPlaneProc(aws, tmp_path, tls=(tmp_path / "plane.pem", tmp_path / "plane.key"))
    try:
        aws.make_service(desired=0)
        proc.url = proc.url.replace("127.0.0.1", "localhost")
        assert proc.url.startswith("https://")
        code, body = request(proc, "GET", "/status", "test-api-key", "--cacert", str(tmp_path / "ca.pem"))
        assert (code, body["status"]) == (200, "stopped")
        untrusted = curl("-H", "x-api-key: test-api-key", f"{proc.url}/status")
        assert untrusted.returncode == 60, untrusted  # curl: the peer's certificate did not verify
        plain = curl("-H", "x-api-key: test-api-key", f"http://localhost:{proc.port}/status")
        assert b'"status"' not in plain.stdout  # no plain HTTP beside it
        assert "GET /status from 127.0.0.1 -> 200" in proc.log()
    finally:
        proc.stop()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tls-cert", "/nonexistent.pem"], b"give --tls-cert and --tls-key together"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], b"cannot read /nonexistent.pem"),
        (["--tls-cert", "/etc/hostname", "--tls-key", "/etc/hostname"], b"are not a PEM certificate and its key"),
    ],
)
def test_bad_tls_flags_are_one_clear_line(flags, message):
    result = subprocess.run(
        [FLUIDITY, "control-plane", "--port", "1", *flags],
        capture_output=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "FLUIDITY_API_KEY": "k"},
    )
    assert result.returncode == 2 and message in result.stderr and b"Traceback" not in result.stderr, result


@pytest.mark.parametrize("key", [None, "", "wrong", "test-api-key-but-longer"])
def test_requests_without_the_right_key_are_403_and_change_nothing(aws, plane, key):
    service = aws.make_service(desired=0)
    for method, path in (("POST", "/wake"), ("GET", "/status"), ("POST", "/kill"), ("GET", "/nope")):
        code, body = request(plane, method, path, key)
        assert (code, body) == (403, {"message": "Forbidden"})
    assert aws.desired_count(service) == 0


def test_unknown_routes_wrong_methods_and_bad_bodies(aws, plane):
    service = aws.make_service(desired=0)
    assert request(plane, "GET", "/")[0] == 404
    assert request(plane, "POST", "/reboot")[0] == 404
    code, body = request(plane, "GET", "/wake")
    assert code == 405 and "POST" in body["error"]
    code, body = request(plane, "POST", "/wake", "test-api-key", "--data", "{oops")
    assert code == 400 and "JSON" in body["error"]
    big = "x" * (70 * 1024)
    code, body = request(plane, "POST", "/kill", "test-api-key", "--data", big)
    assert code == 413
    assert aws.desired_count(service) == 0


def test_aws_failure_is_502(aws, tmp_path):
    proc = ControlPlaneProc(aws, tmp_path, extra_env={"SERVICE_NAME": "missing"})
    try:
        aws.make_service(desired=0)
        code, body = request(proc, "POST", "/wake")
        assert code == 502 and "'missing' not found" in body["error"]
    finally:
        proc.stop()


def test_a_busy_port_is_one_clear_line(aws):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        result = subprocess.run(
            [FLUIDITY, "control-plane", "--port", str(holder.getsockname()[1])],
            capture_output=True,
            timeout=30,
            env={"PATH": "/usr/bin:/bin", "FLUIDITY_API_KEY": "k"},
        )
    finally:
        holder.close()
    assert result.returncode == 1
    assert b"cannot listen on 127.0.0.1" in result.stderr and b"Traceback" not in result.stderr


def test_a_missing_api_key_is_refused():
    result = subprocess.run(
        [FLUIDITY, "control-plane", "--port", "1"], capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"}
    )
    assert result.returncode == 2 and b"--api-key" in result.stderr
