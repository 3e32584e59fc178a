"""The cloud rehearsal: the whole loop on this machine, built only from what the Pulumi
program declares (issue 16). Slow (about five minutes) and needs Docker and the server
image, so it is deselected from the fast suite; `scripts/cloud-rehearsal` builds the image
and runs it, and `.ci/run` runs that.

The program runs under Pulumi's mocks, each resource created in moto (tests/moto_stack.py);
the Lambdas and API Gateway run from the declarations (tests/control_front.py); ECS's part
starts the image as the task definition says (tests/fargate.py); the agent is configured
from the stack's outputs and the client certificate alone. moto enforces IAM from the moment
the stack exists, so every actor calls AWS as its declared role.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from support import Origin, curl, free_port, https_context, make_certs, start_twistd, wait_until

from lambdas.server_port import SERVER_PORT

pytestmark = [pytest.mark.rehearsal, pytest.mark.processes]

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("FLUIDITY_REHEARSAL_IMAGE", "fluidity-server:test")
PAYLOAD = 200_000


class Timeline:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.marks: list[tuple[float, str, str]] = []

    def __call__(self, what: str, detail: str = "") -> None:
        self.marks.append((time.monotonic() - self.start, what, detail))
        print(f"  {self.marks[-1][0]:7.1f}s  {what}" + (f"  ({detail})" if detail else ""), flush=True)

    def at(self, what: str) -> float:
        return next(t for t, w, _ in self.marks if w == what)


def stack_config() -> dict:
    """The sample stack (Pulumi.dev.yaml) with the shortest idle threshold, on the stack's
    default port (443) unless something on this machine holds it (then a free port, said)."""
    sample = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    config = {k.split(":", 1)[1]: str(v) for k, v in sample.items() if k.startswith("fluidity:")}
    config |= {"idleThresholdMinutes": "1", "lookbackMinutes": "1"}
    if "containerPort" not in config and not _port_free(SERVER_PORT):
        print(f"  port {SERVER_PORT} is in use on this machine: the rehearsal's server takes another", flush=True)
        config["containerPort"] = str(free_port())
    return config


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@pytest.fixture
def cloud(tmp_path):
    """Everything up to (not including) the agent; torn down whatever happens."""
    from aws import MotoAws
    from control_front import ApiGateway, LambdaRuntime, Scheduler
    from fargate import Fargate
    from moto_stack import deploy
    from pulumi_mocks import REGION

    image = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", IMAGE], capture_output=True, text=True, timeout=30
    )
    assert image.returncode == 0, (
        f"no image {IMAGE}: run scripts/cloud-rehearsal (it builds it) ({image.stderr.strip()})"
    )
    image_id = image.stdout.strip()
    timeline = Timeline()
    os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"  # AmazonECSTaskExecutionRolePolicy & co.
    aws = MotoAws(region=REGION)
    stopping = []
    try:
        certs = make_certs(tmp_path / "certs")
        pem = {
            key: Path(certs.path(name)).read_text()
            for key, name in (("serverCert", "server.pem"), ("serverKey", "server.key"), ("caCert", "ca.pem"))
        }
        deployment = deploy(aws, stack_config(), pem, image_id)
        declared, credentials = deployment.declared, deployment.credentials
        timeline("stack declared and created in moto", f"{len(declared.resources)} resources; IAM enforced from here")
        task_definition = declared.one("aws:ecs/taskDefinition:TaskDefinition")

        runtime = LambdaRuntime(declared, credentials, aws.env, tmp_path)
        stopping.append(runtime.stop)
        gateway = ApiGateway(declared, runtime)
        stopping.append(gateway.stop)
        fargate = Fargate(
            aws, declared, image_id, credentials[task_definition.inputs["executionRoleArn"]], tmp_path, timeline
        )
        stopping.append(fargate.stop)
        yield type(
            "Cloud",
            (),
            {
                "aws": aws,
                "declared": declared,
                "outputs": declared.outputs,
                "runtime": runtime,
                "gateway": gateway,
                "fargate": fargate,
                "scheduler": Scheduler(declared, runtime),
                "certs": certs,
                "timeline": timeline,
            },
        )
    finally:
        for stop in reversed(stopping):
            try:
                stop()
            except Exception as e:
                print(f"cleanup: {type(e).__name__}: {e}")
        leftover = subprocess.run(
            ["docker", "ps", "-aq", "--filter", "name=fluidity-rehearsal-"], capture_output=True, text=True
        ).stdout.split()
        if leftover:
            subprocess.run(["docker", "rm", "-f", *leftover], capture_output=True)
        aws.stop()


def waker_rules(cloud) -> list[dict]:
    group = cloud.outputs["securityGroupId"]
    rules = cloud.aws.client("ec2").describe_security_groups(GroupIds=[group])["SecurityGroups"][0]["IpPermissions"]
    return [r for r in rules for ip in r.get("IpRanges", []) if ip.get("Description", "").startswith("fluidity waker")]


def active_connections(cloud) -> list[float]:
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    from lambdas.metric_names import ACTIVE_CONNECTIONS

    namespace = cloud.declared.function(cloud.outputs["serviceName"] + "-sleep").inputs["environment"]["variables"][
        "METRICS_NAMESPACE"
    ]
    answer = cloud.aws.client("cloudwatch").get_metric_statistics(
        Namespace=namespace,
        MetricName=ACTIVE_CONNECTIONS,
        Dimensions=[{"Name": "ServiceName", "Value": cloud.outputs["serviceName"]}],
        StartTime=now - datetime.timedelta(minutes=10),
        EndTime=now + datetime.timedelta(minutes=1),
        Period=60,
        Statistics=["Maximum"],
    )
    return [p["Maximum"] for p in answer["Datapoints"]]


def until(cloud, predicate, seconds: float, interval: float = 0.5):
    """wait_until, failing at once when ECS's part has met an error."""

    def checked():
        assert not cloud.fargate.errors, cloud.fargate.errors
        return predicate()

    return wait_until(checked, seconds, interval)


def wake_calls(cloud) -> list[float]:
    return [
        t
        for t, method, path, status in cloud.gateway.calls
        if (method, path) == ("POST", "/prod/wake") and status == 200
    ]


def test_the_whole_loop(cloud, tmp_path):
    t = cloud.timeline
    context, origin_ca = https_context(tmp_path / "origin")
    origin = Origin("rehearsal-origin", context)
    url = f"https://127.0.0.1:{origin.port}/bytes/{PAYLOAD}"
    outputs, certs = cloud.outputs, cloud.certs
    agent_config = {
        "proxy_port": free_port(),
        "cert_file": certs.path("client.pem"),
        "key_file": certs.path("client.key"),
        "ca_file": certs.path("ca.pem"),
        "lifecycle": {
            "wake_endpoint": cloud.gateway.local(outputs["wakeUrl"]),
            "status_endpoint": cloud.gateway.local(outputs["statusUrl"]),
            "kill_endpoint": cloud.gateway.local(outputs["killUrl"]),
            "api_key": outputs["apiKey"],
        },
    }
    agent = start_twistd("agent", agent_config, tmp_path)
    proxy = f"127.0.0.1:{agent_config['proxy_port']}"
    try:
        t("agent started", "configured from wakeUrl, statusUrl, killUrl, apiKey and the client certificate")
        until(cloud, lambda: wake_calls(cloud), 30, 0.2)
        t("woken", "POST /wake through the declared API")
        assert [r["FromPort"] for r in waker_rules(cloud)] == [int(stack_port(cloud))], (
            "wake did not open the server's port to the agent"
        )

        until(cloud, lambda: cloud.fargate.health == "HEALTHY", 90)
        port, floor, uid = int(stack_port(cloud)), unprivileged_port_start(), cloud.fargate.container_uid()
        assert uid not in ("", "0"), f"the server runs as uid {uid!r} on port {port}"
        t("healthy", f"port {port} as uid {uid}; this network namespace keeps ip_unprivileged_port_start at {floor}")
        got = curl("-sS", "--max-time", "150", "--cacert", origin_ca, "-x", f"http://{proxy}", url, timeout=160)
        assert got.returncode == 0 and len(got.stdout) == PAYLOAD, got.stderr
        t("first byte", f"HTTPS through CONNECT, {PAYLOAD} bytes")
        got = curl("-sS", "--max-time", "60", "--cacert", origin_ca, "--socks5-hostname", proxy, url, timeout=70)
        assert got.returncode == 0 and len(got.stdout) == PAYLOAD, got.stderr
        t("SOCKS5 carried", f"{PAYLOAD} bytes")

        until(cloud, lambda: any(v >= 1 for v in active_connections(cloud)), 90, 1.0)
        t(
            "metrics in CloudWatch",
            f"ActiveConnections >= 1 from the server's EMF lines ({cloud.fargate.metrics_put} data points)",
        )
        decision = cloud.scheduler.fire(outputs["serviceName"] + "-sleep")
        assert decision["action"] == "none" and "connected" in decision["reason"], decision
        t("sleep kept it", decision["reason"])

        os.kill(agent.process.pid, signal.SIGSTOP)  # the laptop's lid closes: the agent is gone
        t("agent gone", "SIGSTOP")
        decision = poll_sleep(cloud, seconds=300)
        t("slept", decision["reason"])
        until(cloud, lambda: cloud.fargate.container is None, 60)
        assert waker_rules(cloud) == [], "sleep left the port open"
        os.kill(agent.process.pid, signal.SIGCONT)
        t("agent back", "SIGCONT")

        woken = len(wake_calls(cloud))
        got = curl("-sS", "--max-time", "150", "--cacert", origin_ca, "-x", f"http://{proxy}", url, timeout=160)
        assert got.returncode == 0 and len(got.stdout) == PAYLOAD, got.stderr.decode() + agent.log()[-3000:]
        assert len(wake_calls(cloud)) > woken, "the client's request did not wake the server"
        t("re-woken by a client request", f"{PAYLOAD} bytes")

        code = agent.stop()
        t("agent stopped", f"exit {code}")
        assert code == 0
        until(cloud, lambda: cloud.fargate.container is None, 90)
        assert any(path == "/prod/kill" and status == 200 for _, _, path, status in cloud.gateway.calls), (
            "the agent did not kill the server"
        )
        assert (
            cloud.aws.client("ecs").describe_services(
                cluster=outputs["clusterName"], services=[outputs["serviceName"]]
            )["services"][0]["desiredCount"]
            == 0
        )
        assert waker_rules(cloud) == [], "kill left the port open"
        t("killed", "desired count 0, container stopped, port closed")

        assert cloud.fargate.errors == [], cloud.fargate.errors
        assert cloud.runtime.errors == [], cloud.runtime.errors
        events = cloud.aws.client("logs").filter_log_events(logGroupName=outputs["logGroupName"])["events"]
        assert events, "nothing reached the server's log group"
        print(
            f"\nrehearsal: {len(events)} server log lines in {outputs['logGroupName']}, {cloud.fargate.metrics_put} "
            f"metric data points, "
            f"{sum(f.invocations for f in cloud.runtime.functions.values())} Lambda invocations, "
            f"{len(cloud.gateway.calls)} API calls"
        )
    finally:
        if agent.process.poll() is None:
            os.kill(agent.process.pid, signal.SIGCONT)
            agent.stop()
        origin.close()


def unprivileged_port_start() -> int:
    """The container shares this network namespace (--network host), so this is its value too."""
    return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())


def stack_port(cloud) -> int:
    return cloud.declared.container_definitions()[0]["portMappings"][0]["containerPort"]


def poll_sleep(cloud, seconds: float) -> dict:
    """Fire the declared sleep schedule every 10 s (its rate, compressed) until it stops the server."""
    deadline = time.monotonic() + seconds
    while True:
        decision = cloud.scheduler.fire(cloud.outputs["serviceName"] + "-sleep")
        assert decision["action"] in ("none", "stopped"), decision
        if decision["action"] == "stopped":
            return decision
        assert time.monotonic() < deadline, f"still running after {seconds}s: {decision}"
        time.sleep(10)
