"""Shared fixtures: one certificate set, loopback origins, and a running server + agent pair."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from hypothesis import settings

# CI must not fail on an example nobody has seen before: the same examples every run
# there. HYPOTHESIS_PROFILE=explore searches afresh (do that locally, now and then).
settings.register_profile("repeatable", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

from support import (  # noqa: E402 (the profile is chosen before any test module loads)
    CertSet,
    EchoServer,
    Origin,
    Proc,
    agent_config,
    https_context,
    make_certs,
    server_config,
    start_twistd,
    wait_connected,
)

# -- which tests start real processes -------------------------------------------------------
# A test that starts a process (twistd, curl, openssl, squid, a namespace...) is marked
# `processes`; `pytest -m "not processes"` runs the in-memory and in-process rest in
# seconds. Tests using the shared twistd pair are marked here; the others say so in their
# module. The mark is kept honest: an unmarked test that starts a process fails.
PROCESS_FIXTURES = {"tunnel", "pair"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.processes)


@pytest.fixture(autouse=True)
def _only_marked_tests_start_processes(request, monkeypatch):
    if request.node.get_closest_marker("processes") is None:
        import subprocess

        def refuse(self, *args, **kwargs):
            raise AssertionError(f"{request.node.nodeid} starts a process: mark it @pytest.mark.processes")

        monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    yield


@pytest.fixture(autouse=True)
def _library_patches_restored():
    """A test leaves the library patches as it found them (installing one is a fixture's job,
    undone after): later tests on the same worker must not run patched by accident."""
    from tunnel.wire import patches

    registry = patches.registry()
    before = registry.snapshot()
    yield
    differed = registry.restore(before)
    if differed:
        pytest.fail(f"the test left library patches changed: {', '.join(differed)} (restore them)")


@pytest.fixture
def patched():
    """Install registered patches by name for one test; removed after."""
    from tunnel.wire import patches

    registry = patches.registry()
    installed: list[str] = []

    def install(*names: str) -> None:
        for name in names:
            if not registry.active(name):
                assert registry.install(name), registry.refusal(name)
                installed.append(name)

    yield install
    for name in installed:
        registry.remove(name)


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> CertSet:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def http_origin():
    origin = Origin("http-origin")
    yield origin
    origin.close()


@pytest.fixture(scope="session")
def second_origin():
    origin = Origin("second-origin")
    yield origin
    origin.close()


@pytest.fixture(scope="session")
def https_origin(tmp_path_factory):
    context, ca = https_context(tmp_path_factory.mktemp("origin-ca"))
    origin = Origin("https-origin", context)
    origin.ca = ca
    yield origin
    origin.close()


@pytest.fixture(scope="session")
def echo():
    server = EchoServer()
    yield server
    server.close()


@dataclass
class Tunnel:
    server: Proc
    agent: Proc
    certs: CertSet

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.agent.port}"


@pytest.fixture(scope="session")
def tunnel(certs, tmp_path_factory) -> Tunnel:
    workdir = tmp_path_factory.mktemp("tunnel")
    server = start_twistd("server", server_config(certs), workdir)
    agent = start_twistd("agent", agent_config(certs, server.port), workdir)
    try:
        wait_connected(agent)
    except TimeoutError:
        raise RuntimeError(f"agent never connected\nserver:\n{server.log()}\nagent:\n{agent.log()}") from None
    yield Tunnel(server, agent, certs)
    assert agent.stop() == 0
    assert server.stop() == 0
    # Every test above threw real and malformed traffic at this pair: nothing may have
    # escaped as an unhandled error in either reactor.
    for proc in (server, agent):
        proc.assert_no_unhandled_errors()


@pytest.fixture
def pair(certs, tmp_path):
    """A server and an agent of this test's own: it may freeze, kill or flood them."""
    import signal

    server = start_twistd("server", server_config(certs), tmp_path)
    agent = start_twistd("agent", agent_config(certs, server.port), tmp_path)
    wait_connected(agent)
    yield server, agent
    server.process.send_signal(signal.SIGCONT)  # a test may have frozen it
    agent.stop()
    server.stop()


@pytest.fixture(scope="session")
def moto_server():
    from aws import MotoAws

    server = MotoAws()
    yield server
    server.stop()


@pytest.fixture
def aws(moto_server, monkeypatch):
    """A clean moto account; this process's boto3 (the Lambda handlers) points at it."""
    from deployment import clients

    moto_server.reset()
    for name, value in moto_server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CLUSTER_NAME", "fluidity")
    monkeypatch.setenv("SERVICE_NAME", "fluidity-server")
    clients.forget()
    yield moto_server
    clients.forget()
