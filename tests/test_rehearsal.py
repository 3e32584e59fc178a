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

from deployment.server_port import SERVER_PORT

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
def cloud(tmp_path, request):
    """Everything up to (not including) the agent; torn down whatever happens. A test may
    give stack keys of its own (indirect parametrisation)."""
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
        deployment = deploy(aws, stack_config() | getattr(request, "param", {}), pem, image_id)
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
        from moto_stack import enforce_iam

        enforce_iam(aws, False)  # moto's setting, for this whole process: the next rehearsal starts without it
        aws.stop()


def waker_rules(cloud) -> list[dict]:
    group = cloud.outputs["securityGroupId"]
    rules = cloud.aws.client("ec2").describe_security_groups(GroupIds=[group])["SecurityGroups"][0]["IpPermissions"]
    return [r for r in rules for ip in r.get("IpRanges", []) if ip.get("Description", "").startswith("fluidity waker")]


def active_connections(cloud) -> list[float]:
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    from deployment.metric_names import ACTIVE_CONNECTIONS

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


# -- a stable endpoint and two tasks (issue 29) -------------------------------------------------


def owned_by(cloud, task) -> bool:
    """Whether the agent's tunnel connection is on this task (its server said so in its log)."""
    return any("agent " in line and "connected (h2)" in line for line in task.lines)


@pytest.mark.parametrize("cloud", [{"stableEndpoint": "nlb", "maxTasks": "2"}], indirect=True)
def test_two_tasks_behind_the_load_balancer(cloud, tmp_path):
    """The declared Network Load Balancer reproduced by a real HAProxy in front of two server
    containers started as the task definition says; an agent configured from the stack's
    outputs dials the balancer's name. The task carrying the agent is stopped mid-use (as a
    Spot interruption or a new revision would): the agent follows its GOAWAY to the other
    task through the same name, and local clients wait at most tunnel_wait. Sleep then
    stops both tasks once nobody uses them."""
    import threading

    from nlb import LoadBalancer

    t = cloud.timeline
    outputs, certs = cloud.outputs, cloud.certs
    balancer = LoadBalancer(cloud.aws, cloud.declared, tmp_path, t)
    assert outputs["endpoint"] == balancer.dns_name
    context, origin_ca = https_context(tmp_path / "origin")
    origin = Origin("rehearsal-origin", context)
    url = f"https://127.0.0.1:{origin.port}/bytes/20000"
    tunnel_wait = 10.0
    agent_config = {
        "proxy_port": free_port(),
        "cert_file": certs.path("client.pem"),
        "key_file": certs.path("client.key"),
        "ca_file": certs.path("ca.pem"),
        "tunnel_wait": f"{tunnel_wait:g}s",
        "lifecycle": {
            "wake_endpoint": cloud.gateway.local(outputs["wakeUrl"]),
            "status_endpoint": cloud.gateway.local(outputs["statusUrl"]),
            "kill_endpoint": cloud.gateway.local(outputs["killUrl"]),
            "api_key": outputs["apiKey"],
        },
    }
    # The laptop resolves the balancer's name to the balancer (a hosts file of its own).
    resolves = ("unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(balancer.hosts_file()))
    agent = start_twistd("agent", agent_config, tmp_path, prefix=resolves)
    proxy = f"http://127.0.0.1:{agent_config['proxy_port']}"
    scaling = cloud.aws.client("application-autoscaling")

    def bounds():
        target = scaling.describe_scalable_targets(ServiceNamespace="ecs")["ScalableTargets"][0]
        return target["MinCapacity"], target["MaxCapacity"]

    try:
        until(cloud, lambda: wake_calls(cloud), 30, 0.2)
        t("woken", f"scaling bounds {bounds()}")
        assert bounds() == (1, 2)
        got = curl("-sS", "--max-time", "150", "--cacert", origin_ca, "-x", proxy, url, timeout=160)
        assert got.returncode == 0 and len(got.stdout) == 20000, got.stderr + agent.log()[-3000:].encode()
        assert f"server is running at {balancer.dns_name}" in agent.log()
        t("first byte through the balancer's name", balancer.dns_name)

        # Application Auto Scaling's part: the tasks' CPU asked for a second one.
        cloud.aws.client("ecs").update_service(
            cluster=outputs["clusterName"], service=outputs["serviceName"], desiredCount=2
        )
        until(cloud, lambda: balancer.targets is not None and len(balancer.targets) == 2, 120)
        t("two tasks behind the balancer", ", ".join(task.address for task in cloud.fargate.tasks))
        carrying = next(task for task in cloud.fargate.tasks if owned_by(cloud, task))

        results: list[tuple[float, float, bool]] = []  # (started, seconds, carried)
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                began = time.monotonic()
                done = curl("-sS", "--max-time", "60", "--cacert", origin_ca, "-x", proxy, url, timeout=70)
                results.append((began, time.monotonic() - began, done.returncode == 0 and len(done.stdout) == 20000))
                time.sleep(0.2)

        clients = threading.Thread(target=client, daemon=True)
        clients.start()
        sigterm = cloud.fargate.interrupt(carrying)  # deregistered, drained, then SIGTERM
        t("task carrying the agent stopped", f"{carrying.address}: SIGTERM after its deregistration delay")
        moved = until(cloud, lambda: next((b for b, _, ok in results if ok and b > sigterm), None), 60, 0.2)
        time.sleep(3)
        stop.set()
        clients.join(90)
        after = [r for r in results if r[0] >= sigterm - 1]
        assert results and all(ok for _, _, ok in results), [r for r in results if not r[2]]
        slowest = max(seconds for _, seconds, _ in after)
        t(
            "agent moved to the other task",
            f"first request carried {moved - sigterm:.2f}s after SIGTERM; slowest request meanwhile {slowest:.2f}s "
            f"(tunnel_wait {tunnel_wait:g}s); {len(results)} requests, none failed",
        )
        assert slowest <= tunnel_wait + 5
        assert "is draining this connection; opening a new one" in agent.log(), agent.log()[-3000:]

        os.kill(agent.process.pid, signal.SIGSTOP)
        t("agent gone", "SIGSTOP")
        decision = poll_sleep(cloud, seconds=300)
        t("slept", decision["reason"])
        until(cloud, lambda: cloud.fargate.tasks == [], 120)
        assert bounds() == (0, 2)
        t("every task stopped", f"scaling bounds {bounds()}")
        assert cloud.fargate.errors == [] and balancer.errors == [], (cloud.fargate.errors, balancer.errors)
    finally:
        if agent.process.poll() is None:
            os.kill(agent.process.pid, signal.SIGCONT)
            agent.stop()
        balancer.stop()
        origin.close()
