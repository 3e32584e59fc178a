"""`fluidity doctor` as a user runs it: against a real server on loopback, with the things
that go wrong in practice (server down, wrong CA, wrong name, a key others can read, a
certificate about to expire, the control plane refusing the key)."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import time

import pytest
import yaml
from support import FLUIDITY, agent_config, server_config, start_twistd

from tunnel.wire import pki

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)


def doctor(config: dict, tmp_path, name: str = "agent.yaml", env: dict | None = None) -> tuple[int, str]:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in ("HTTPS_PROXY", "https_proxy")
    }
    done = subprocess.run(
        [FLUIDITY, "doctor", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "HOME": str(tmp_path), **(env or {})},
    )
    return done.returncode, done.stdout


def test_a_good_set_up_passes_every_check(certs, tmp_path):
    server = start_twistd("server", server_config(certs), tmp_path)
    try:
        code, out = doctor(agent_config(certs, server.port), tmp_path)
    finally:
        server.stop()
    assert code == 0, out
    for line in (
        "ok    config:",
        "ok    certificate and key: match",
        "ok    client certificate and CA",
        "ok    server name and CA",
        "ALPN h2",
        "ok    library patches: ",
        "eager TCP writes: fits",
        "eager TCP connects: fits",
        "hyperframe DATA repr: fits",
        "TLS record batching: fits",
    ):
        assert line in out, out
    assert out.strip().endswith("all good.")


def test_each_problem_is_one_line_with_its_fix(certs, tmp_path):
    server = start_twistd("server", server_config(certs), tmp_path)
    try:
        # Server down (a port nobody listens on).
        code, out = doctor(agent_config(certs, 1), tmp_path, "down.yaml")
        assert code == 1 and "FAIL  TLS handshake: 127.0.0.1:1" in out and "->" in out
        # A name the server's certificate does not carry.
        code, out = doctor(agent_config(certs, server.port, server_name="someone-else"), tmp_path, "name.yaml")
        assert code == 1 and "FAIL  server name and CA" in out and "someone-else" in out
        # The client certificate of another CA: the server refuses it.
        other = certs.directory / "other"
        code, out = doctor(
            agent_config(certs, server.port, cert_file=str(other / "client.pem"), key_file=str(other / "client.key")),
            tmp_path,
            "ca.yaml",
        )
        assert code == 1 and "FAIL  client certificate and CA" in out
    finally:
        server.stop()
    # A key others can read.
    loose = tmp_path / "loose.key"
    shutil.copy(certs.path("client.key"), loose)
    os.chmod(loose, 0o644)
    code, out = doctor(agent_config(certs, 1, key_file=str(loose)), tmp_path, "mode.yaml")
    assert code == 1 and f"chmod 600 {loose}" in out


def test_a_certificate_about_to_expire_is_a_warning(certs, tmp_path):
    ca_cert, ca_key = pki.load_ca(certs.directory)
    cert, key = pki.issue(ca_cert, ca_key, "soon", server=False, days=10)
    (tmp_path / "soon").mkdir()
    issued = pki.save(tmp_path / "soon", "soon", cert, key, force=True)
    _code, out = doctor(
        agent_config(certs, 1, cert_file=str(issued.cert_path), key_file=str(issued.key_path)), tmp_path
    )
    assert "warn  client certificate expiry: expires in" in out, out
    assert (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=10)).strftime("%Y-%m-%d") in out


def test_the_control_plane_and_its_key(certs, aws, tmp_path):
    from aws import ControlPlaneProc

    aws.make_service(desired=0)
    plane = ControlPlaneProc(aws, tmp_path)
    try:
        lifecycle = {
            "wake_endpoint": f"{plane.url}/wake",
            "status_endpoint": f"{plane.url}/status",
            "api_key": plane.api_key,
        }
        code, out = doctor(agent_config(certs, 8443, server_ip="", lifecycle=lifecycle), tmp_path, "plane.yaml")
        assert "ok    control plane:" in out and "the server is stopped" in out and "warn  server address" in out
        wrong = dict(lifecycle, api_key="not-the-key")
        code, out = doctor(agent_config(certs, 8443, server_ip="", lifecycle=wrong), tmp_path, "key.yaml")
        assert code == 1 and "answered 403" in out and "lifecycle.api_key" in out
    finally:
        plane.stop()


@pytest.mark.parametrize("plane_host", ["127.0.0.1", "localhost"])
def test_a_loopback_control_plane_is_asked_directly_never_through_the_proxy(certs, aws, tmp_path, plane_host):
    """With $HTTPS_PROXY (and $HTTP_PROXY) set, doctor's status call with the API key to a
    plain http:// control plane on this machine never reaches the proxy (a real squid, which
    records every request it gets), nor does `--allow-ip auto`'s question for this
    machine's address."""
    from aws import ControlPlaneProc
    from squid import Squid

    from tunnel.ops.operations import my_address

    aws.make_service(desired=0)
    plane = ControlPlaneProc(aws, tmp_path)
    url = plane.url.replace("127.0.0.1", plane_host)
    squid = Squid((), {}, ssl_ports=(plane.port,))
    proxies = {"HTTPS_PROXY": f"http://127.0.0.1:{squid.port}", "HTTP_PROXY": f"http://127.0.0.1:{squid.port}"}
    try:
        lifecycle = {"wake_endpoint": f"{url}/wake", "status_endpoint": f"{url}/status", "api_key": plane.api_key}
        _code, out = doctor(agent_config(certs, 8443, server_ip="", lifecycle=lifecycle), tmp_path, env=proxies)
        assert f"ok    control plane: {url}/status answers: the server is stopped" in out, out
        with pytest.MonkeyPatch.context() as patch:
            for name, value in proxies.items():
                patch.setenv(name, value)
            assert my_address(f"{url}/status", plane.api_key) == "127.0.0.1"
        time.sleep(0.5)  # squid writes its access log as each request ends
        assert str(plane.port) not in squid.access_log(), squid.access_log()
        assert "POST /wake from" not in plane.log() and "GET /status from 127.0.0.1 -> 200" in plane.log()
    finally:
        squid.stop()
        plane.stop()


def test_aws_credentials_and_region_are_checked_when_aws_is_in_use(certs, aws, tmp_path):
    _, out = doctor(agent_config(certs, 1), tmp_path, env=aws.env)
    assert "ok    AWS region: us-east-1" in out and "ok    AWS credentials: found" in out
    without_region = {k: v for k, v in aws.env.items() if "REGION" not in k}
    _code, out = doctor(agent_config(certs, 1), tmp_path, "noregion.yaml", env=without_region)
    assert "FAIL  AWS region: none set" in out and "AWS_REGION" in out


def test_a_port_that_does_not_speak_tls_is_named_so(certs, tmp_path, http_origin):
    """Issue 26, item 7: not a raw WRONG_VERSION_NUMBER."""
    code, out = doctor(agent_config(certs, http_origin.port), tmp_path, "plain.yaml")
    assert code == 1 and "not with TLS" in out and "WRONG_VERSION_NUMBER" not in out, out


def test_a_proxy_that_hangs_up_on_the_connect_is_a_failed_check_not_a_crash(certs, tmp_path):
    """A proxy that reads the CONNECT and closes (or answers something that is not HTTP)."""
    import socket
    import threading

    for answer in (b"", b"SSH-2.0-OpenSSH_9.2\r\n"):
        listener = socket.create_server(("127.0.0.1", 0))

        def hang_up(listener=listener, answer=answer):
            with listener:
                for _ in range(4):
                    try:
                        conn, _ = listener.accept()
                    except OSError:
                        return
                    with conn:
                        conn.recv(65536)
                        conn.sendall(answer)

        threading.Thread(target=hang_up, daemon=True).start()
        proxy = f"http://127.0.0.1:{listener.getsockname()[1]}"
        code, out = doctor(agent_config(certs, 1, upstream_proxy=proxy), tmp_path, "hangs-up.yaml")
        listener.close()
        assert code == 1, out
        assert "FAIL  upstream proxy" in out and "no HTTP answer" in out, out
        assert "Traceback" not in out, out
