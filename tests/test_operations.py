"""`fluidity start | stop | status` against moto's server, run as the operator runs them."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from aws import EcsScheduler
from support import FLUIDITY

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)


def fluidity(aws, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    environment = {**os.environ, **aws.env, "AWS_EC2_METADATA_DISABLED": "true", **(env or {})}
    return subprocess.run([FLUIDITY, *args], capture_output=True, text=True, timeout=timeout, env=environment)


@pytest.fixture
def service(aws):
    return aws.make_service(desired=0, port=9443)


def test_start_waits_for_running_and_prints_the_agent_command(aws, service):
    scheduler = EcsScheduler(aws, service, start_delay=1.0)
    try:
        done = fluidity(aws, "start", "--poll-interval", "0.2", "--timeout", "30")
    finally:
        scheduler.stop()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "asked ECS to run fluidity/fluidity-server (desiredCount 1)" in lines[0]
    assert any("waiting for ECS to place a task" in line for line in lines)  # progress, not a fixed sleep
    assert any("RUNNING, public IP 127.0.0.1" in line for line in lines)
    assert (
        "The server is running at 127.0.0.1:9443 (public DNS name ip-127-0-0-1.ec2.internal: give that as server_ip "
        "behind a proxy" in done.stdout
    )
    assert (
        "twistd -n fluidity-agent --config configs/agent.yaml --server-ip 127.0.0.1 --server-port 9443" in done.stdout
    )
    assert aws.desired_count(service) == 1


def test_start_writes_server_ip_keeping_every_other_line(aws, service, tmp_path):
    original = (
        "# my agent\n"
        "proxy_port: 8080\n"
        'server_ip: ""              # the Fargate task\'s public IP\n'
        "server_port: 8443\n"
        "lifecycle:\n"
        '  api_key: ""   # secret\n'
    )
    config = tmp_path / "agent.yaml"
    config.write_text(original)
    scheduler = EcsScheduler(aws, service, start_delay=0)
    try:
        done = fluidity(aws, "start", "--poll-interval", "0.2", "--timeout", "30", "--write-config", str(config))
    finally:
        scheduler.stop()
    assert done.returncode == 0, done.stderr
    assert config.read_text() == original.replace('server_ip: ""', "server_ip: 127.0.0.1")
    assert f"twistd -n fluidity-agent --config {config}" in done.stdout
    import yaml

    assert yaml.safe_load(config.read_text())["server_ip"] == "127.0.0.1"


def test_start_times_out_saying_where_the_task_was_stuck(aws, service):
    done = fluidity(aws, "start", "--poll-interval", "0.2", "--timeout", "1.5")  # nothing places the task
    assert done.returncode == 1
    assert "timed out after 1.5s: the task was stuck in no task placed" in done.stderr
    assert "describe-services --cluster fluidity --services fluidity-server" in done.stderr
    assert "Traceback" not in done.stderr


def test_stop_waits_until_no_task_runs(aws, service):
    aws.client("ecs").update_service(cluster="fluidity", service="fluidity-server", desiredCount=1)
    aws.reconcile(service)
    scheduler = EcsScheduler(aws, service)
    try:
        done = fluidity(aws, "stop", "--poll-interval", "0.2", "--timeout", "30")
    finally:
        scheduler.stop()
    assert done.returncode == 0, done.stderr
    assert "stopped after" in done.stdout and aws.desired_count(service) == 0
    assert aws.service_tasks(service) == []


def test_stop_no_wait_returns_at_once(aws, service):
    aws.client("ecs").update_service(cluster="fluidity", service="fluidity-server", desiredCount=1)
    aws.reconcile(service)
    done = fluidity(aws, "stop", "--no-wait")
    assert done.returncode == 0 and aws.desired_count(service) == 0
    assert len(aws.service_tasks(service)) == 1  # nobody stopped it yet, and we did not wait


def test_status_table_and_json(aws, service):
    import time

    aws.client("ecs").update_service(cluster="fluidity", service="fluidity-server", desiredCount=1)
    aws.reconcile(service, public_ip="127.0.0.5")
    from test_lambdas import put_metrics

    put_metrics(aws, active=2, last_activity=time.time() - 90)
    asked = time.time()
    done = fluidity(aws, "status")
    took = time.time() - asked
    assert done.returncode == 0, done.stderr
    table = dict(line.split("  ", 1) for line in done.stdout.splitlines())
    table = {k.strip(): v.strip() for k, v in table.items()}
    assert table["state"] == "running"
    assert table["desired / running / pending"] == "1 / 1 / 0"
    assert table["public address"] == "127.0.0.5:9443 (ip-127-0-0-5.ec2.internal)"
    assert table["agents connected (last 10 min)"] == "2"
    ago = int(table["last activity"].rsplit("(", 1)[1].removesuffix("s ago)"))
    assert 90 <= ago <= 91 + took, table["last activity"]  # however long the command took on a busy machine
    assert table["task"].startswith("RUNNING")

    as_json = json.loads(fluidity(aws, "status", "--json").stdout)
    assert (as_json["status"], as_json["publicIp"], as_json["port"], as_json["connectedAgents"]) == (
        "running",
        "127.0.0.5",
        9443,
        2,
    )


def test_status_of_a_stopped_service(aws, service):
    as_json = json.loads(fluidity(aws, "status", "--json").stdout)
    assert (as_json["status"], as_json["desiredCount"], as_json["publicIp"], as_json["connectedAgents"]) == (
        "stopped",
        0,
        None,
        None,
    )


@pytest.mark.parametrize("command", ["start", "stop", "status"])
def test_unknown_cluster_or_service_is_one_line_and_exit_1(aws, service, command):
    for flags, expected in (
        (["--cluster", "nope"], "ClusterNotFoundException"),
        (["--service", "nope"], "'nope' not found in cluster 'fluidity'"),
    ):
        done = fluidity(aws, command, *flags)
        assert done.returncode == 1, done.stdout
        assert done.stderr.startswith(f"fluidity {command}: ") and expected in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_no_credentials_is_a_clear_error(aws, tmp_path):
    env = dict.fromkeys(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"), "")
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    environment = {
        k: v for k, v in {**os.environ, **aws.env, **env, "AWS_EC2_METADATA_DISABLED": "true"}.items() if v != ""
    }
    done = subprocess.run([FLUIDITY, "status"], capture_output=True, text=True, timeout=60, env=environment)
    assert done.returncode == 1
    assert "no AWS credentials found" in done.stderr and "Traceback" not in done.stderr


def test_no_region_is_a_clear_error(aws, tmp_path):
    environment = {k: v for k, v in {**os.environ, **aws.env}.items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION")}
    environment.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")
    done = subprocess.run([FLUIDITY, "start"], capture_output=True, text=True, timeout=60, env=environment)
    assert done.returncode == 1 and "no AWS region" in done.stderr, done.stderr


def _without_regions(aws, tmp_path) -> dict:
    environment = {k: v for k, v in {**os.environ, **aws.env}.items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION")}
    environment.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")
    return environment


@pytest.mark.parametrize("how", ["AWS_REGION", "AWS_DEFAULT_REGION", "--region"])
def test_the_region_may_come_from_either_variable_or_the_flag(aws, service, tmp_path, how):
    environment = _without_regions(aws, tmp_path)
    args = [FLUIDITY, "status", "--json"]
    if how == "--region":
        args += ["--region", aws.env["AWS_DEFAULT_REGION"]]
    else:
        environment[how] = aws.env["AWS_DEFAULT_REGION"]  # only this one is set
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=environment)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["desiredCount"] == 0


def test_an_unknown_profile_is_a_clear_error(aws, tmp_path):
    done = subprocess.run(
        [FLUIDITY, "status", "--profile", "no-such-profile"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_without_regions(aws, tmp_path),
    )
    assert done.returncode == 1
    assert "no AWS profile named 'no-such-profile'" in done.stderr and "Traceback" not in done.stderr


def test_start_refuses_a_service_whose_desired_count_pulumi_owns(aws, service):
    ecs = aws.client("ecs")
    arn = ecs.describe_services(cluster=service.cluster, services=[service.name])["services"][0]["serviceArn"]
    ecs.tag_resource(resourceArn=arn, tags=[{"key": "fluidity:desired-count-owner", "value": "pulumi"}])
    done = fluidity(aws, "start", "--timeout", "5")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "pulumi config set desiredCount 1" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert aws.desired_count(service) == 0


def _open_to(aws, service, port: int) -> set[str]:
    group = aws.client("ec2").describe_security_groups(GroupIds=[service.security_group])["SecurityGroups"][0]
    return {r["CidrIp"] for p in group["IpPermissions"] if p.get("FromPort") == port for r in p.get("IpRanges", [])}


@pytest.mark.parametrize("balanced", [False, True], ids=["task", "behind-nlb"])
def test_start_opens_the_port_to_the_operator_and_stop_closes_it(aws, tmp_path, balanced):
    """Behind the stack's load balancer (issue 29) the port opens on the balancer's group."""
    from aws import ControlPlaneProc

    service = aws.make_service(desired=0, port=9443, wakers=True, balanced=balanced)
    plane = ControlPlaneProc(aws, tmp_path, extra_env={"CONTAINER_PORT": "9443"})
    scheduler = EcsScheduler(aws, service, start_delay=0.2)
    try:
        done = fluidity(
            aws,
            "start",
            "--poll-interval",
            "0.2",
            "--timeout",
            "30",
            "--allow-ip",
            "auto",
            "--status-url",
            f"{plane.url}/status",
            "--api-key",
            "env:PLANE_KEY",
            env={"PLANE_KEY": plane.api_key},
        )
        assert done.returncode == 0, done.stderr
        assert "opened port 9443 to 127.0.0.1/32" in done.stdout  # the address the control plane saw
        assert _open_to(aws, service, 9443) == {"127.0.0.1/32"}
        again = fluidity(aws, "start", "--timeout", "5", "--allow-ip", "203.0.113.8")
        assert again.returncode == 0 and _open_to(aws, service, 9443) == {"127.0.0.1/32", "203.0.113.8/32"}
        stopped = fluidity(aws, "stop", "--no-wait")
        assert stopped.returncode == 0 and "closed the server's port to 2 waker address(es)" in stopped.stdout
        assert _open_to(aws, service, 9443) == set()
    finally:
        scheduler.stop()
        plane.stop()


def test_start_without_allow_ip_says_how_to_open_the_port(aws):
    service = aws.make_service(desired=1, wakers=True)
    aws.reconcile(service)
    done = fluidity(aws, "start", "--timeout", "5")
    assert done.returncode == 0 and "--allow-ip" in done.stdout
    bad = fluidity(aws, "start", "--timeout", "5", "--allow-ip", "not-an-ip")
    assert bad.returncode == 1 and "--allow-ip takes an IPv4 address or auto" in bad.stderr


def test_start_and_stop_move_the_scaling_lower_bound_where_the_service_scales(aws, service):
    """Issue 29: with maxTasks > 1 the operator's start and stop own the count the way the
    control plane does: the lower bound to 1 before starting, to 0 before stopping."""
    scaling = aws.client("application-autoscaling")
    scaling.register_scalable_target(
        ServiceNamespace="ecs",
        ResourceId="service/fluidity/fluidity-server",
        ScalableDimension="ecs:service:DesiredCount",
        MinCapacity=0,
        MaxCapacity=4,
    )

    def bounds():
        target = scaling.describe_scalable_targets(ServiceNamespace="ecs")["ScalableTargets"][0]
        return target["MinCapacity"], target["MaxCapacity"]

    scheduler = EcsScheduler(aws, service)
    try:
        done = fluidity(aws, "start", "--poll-interval", "0.2", "--timeout", "30")
        assert done.returncode == 0, done.stderr
        assert bounds() == (1, 4) and aws.desired_count(service) == 1
        done = fluidity(aws, "stop", "--no-wait")
        assert done.returncode == 0, done.stderr
        assert bounds() == (0, 4) and aws.desired_count(service) == 0
    finally:
        scheduler.stop()


def test_behind_the_load_balancer_start_gives_its_name_not_a_tasks_address(aws, tmp_path):
    """Issue 29: the agent config gets the balancer's DNS name, the same at every start."""
    service = aws.make_service(desired=0, port=9443, balanced=True)
    name = aws.client("elbv2").describe_load_balancers()["LoadBalancers"][0]["DNSName"]
    config = tmp_path / "agent.yaml"
    config.write_text('server_ip: ""\n')
    scheduler = EcsScheduler(aws, service, start_delay=0)
    try:
        done = fluidity(aws, "start", "--poll-interval", "0.2", "--timeout", "30", "--write-config", str(config))
    finally:
        scheduler.stop()
    assert done.returncode == 0, done.stderr
    assert f"The server is running at {name}:9443 (the stack's load balancer" in done.stdout
    assert config.read_text() == f"server_ip: {name}\n"
