"""The control plane built only from what the Pulumi program declares, in moto with IAM
enforced: the fast half of the cloud rehearsal (no Docker). Each seam the rehearsal
crosses is broken once here, the way a change to the program could break it, and the
declared API must then fail the way AWS would."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support import make_certs

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)


@pytest.fixture
def plane(tmp_path, monkeypatch):
    """Deploys on demand (a test may first break the program), then serves the declared API."""
    from aws import MotoAws
    from control_front import ApiGateway, LambdaRuntime
    from moto_stack import deploy, enforce_iam
    from pulumi_mocks import REGION

    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
    aws = MotoAws(region=REGION)
    certs = make_certs(tmp_path / "certs")
    pem = {
        key: Path(certs.path(name)).read_text()
        for key, name in (("serverCert", "server.pem"), ("serverKey", "server.key"), ("caCert", "ca.pem"))
    }
    running = []

    def start(config: dict | None = None):
        deployment = deploy(aws, {"idleThresholdMinutes": "1", **(config or {})}, pem)
        runtime = LambdaRuntime(deployment.declared, deployment.credentials, aws.env, tmp_path)
        running.append(runtime)
        gateway = ApiGateway(deployment.declared, runtime)
        running.append(gateway)
        gateway.runtime = runtime
        return aws, deployment.declared, gateway

    yield start
    for thing in reversed(running):
        thing.stop()
    enforce_iam(aws, False)  # moto's setting, for this whole process (the next test resets moto)
    aws.stop()


def call(gateway, url: str, method: str, key: str | None) -> tuple[int, dict]:
    request = urllib.request.Request(
        gateway.local(url),
        method=method,
        data=b"" if method == "POST" else None,
        headers={"x-api-key": key} if key else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def desired(aws, declared) -> int:
    outputs = declared.outputs
    return aws.client("ecs").describe_services(cluster=outputs["clusterName"], services=[outputs["serviceName"]])[
        "services"
    ][0]["desiredCount"]


def test_the_declared_api_wakes_reports_and_kills_with_each_roles_own_rights(plane):
    aws, declared, gateway = plane()
    outputs, key = declared.outputs, declared.outputs["apiKey"]
    status, body = call(gateway, outputs["statusUrl"], "GET", key)
    assert status == 200 and body["status"] == "stopped" and body["port"] == 443, body
    status, body = call(gateway, outputs["wakeUrl"], "POST", key)
    assert status == 200 and body["status"] == "starting", body
    assert desired(aws, declared) == 1
    group = aws.client("ec2").describe_security_groups(GroupIds=[outputs["securityGroupId"]])["SecurityGroups"][0]
    assert [r["IpRanges"][0]["CidrIp"] for r in group["IpPermissions"]] == ["127.0.0.1/32"]
    status, body = call(gateway, outputs["killUrl"], "POST", key)
    assert status == 200 and desired(aws, declared) == 0, body
    # What the declared API itself refuses, as API Gateway would.
    assert call(gateway, outputs["wakeUrl"], "POST", "not-the-key") == (403, {"message": "Forbidden"})
    assert call(gateway, outputs["wakeUrl"], "POST", None) == (403, {"message": "Forbidden"})
    assert call(gateway, outputs["wakeUrl"], "GET", key) == (403, {"message": "Missing Authentication Token"})
    assert call(gateway, outputs["apiUrl"] + "/sleep", "POST", key) == (
        403,
        {"message": "Missing Authentication Token"},
    )
    # Each function's output reached its own log group, written with its own role.
    assert gateway.runtime.errors == []
    logs = aws.client("logs")
    for function in ("wake", "status", "kill"):
        events = logs.filter_log_events(logGroupName=f"/aws/lambda/{outputs['serviceName']}-{function}")["events"]
        assert any("decision" in e["message"] or "botocore" in e["message"] for e in events), function


def test_a_role_that_may_not_write_its_logs_is_caught(plane, monkeypatch):
    from infra import policies

    declared_policy = policies.control_function

    def without_logs(role, **kw):
        document = declared_policy(role, **kw)
        document["Statement"] = [s for s in document["Statement"] if s.get("Sid") != "OwnLogs"]
        return document

    monkeypatch.setattr(policies, "control_function", without_logs)
    _, declared, gateway = plane()
    status, _ = call(gateway, declared.outputs["statusUrl"], "GET", declared.outputs["apiKey"])
    assert status == 200  # Lambda answers anyway and drops the logs...
    assert any("AccessDenied" in e and "CreateLogStream" in e for e in gateway.runtime.errors), (
        gateway.runtime.errors
    )  # ...which the rehearsal does not


def test_a_role_without_a_permission_its_lambda_uses_fails_the_call(plane, monkeypatch):
    from infra import policies

    declared_policy = policies.control_function

    def without_update_service(role, **kw):
        document = declared_policy(role, **kw)
        for statement in document["Statement"]:
            statement["Action"] = (
                [a for a in statement["Action"] if a != "ecs:UpdateService"]
                if isinstance(statement["Action"], list)
                else statement["Action"]
            )
        return document

    monkeypatch.setattr(policies, "control_function", without_update_service)
    aws, declared, gateway = plane()
    status, body = call(gateway, declared.outputs["wakeUrl"], "POST", declared.outputs["apiKey"])
    assert status == 502 and "UpdateService" in body["error"] and "AccessDenied" in body["error"], body
    assert desired(aws, declared) == 0


def test_an_environment_name_the_lambdas_do_not_read_fails_the_call(plane, monkeypatch):
    from infra import control_plane

    declared_environment = control_plane.function_environment
    monkeypatch.setattr(
        control_plane,
        "function_environment",
        lambda s, *places: {
            ("ECS_CLUSTER" if k == "CLUSTER_NAME" else k): v for k, v in declared_environment(s, *places).items()
        },
    )
    _, declared, gateway = plane()
    status, body = call(gateway, declared.outputs["statusUrl"], "GET", declared.outputs["apiKey"])
    assert status == 500 and "CLUSTER_NAME must be set" in body["error"], body


def test_a_code_archive_missing_a_module_fails_the_call(plane, monkeypatch):
    import pulumi

    from infra import control_plane

    whole = control_plane.code_archive
    monkeypatch.setattr(
        control_plane,
        "code_archive",
        lambda: pulumi.AssetArchive({k: v for k, v in whole().assets.items() if k != "deployment/ecs_state.py"}),
    )
    _, declared, gateway = plane()
    assert call(gateway, declared.outputs["statusUrl"], "GET", declared.outputs["apiKey"]) == (
        502,
        {"message": "Internal server error"},
    )


def test_a_route_api_gateway_may_not_invoke_is_an_internal_error(plane, monkeypatch):
    import pulumi_aws as aws_sdk

    real = aws_sdk.lambda_.Permission

    def wrong_source(name, **kw):  # a permission for another stage than the one deployed
        kw["source_arn"] = kw["source_arn"].apply(lambda arn: arn.replace("/*/", "/test/"))
        return real(name, **kw)

    monkeypatch.setattr(aws_sdk.lambda_, "Permission", wrong_source)
    _, declared, gateway = plane()
    assert call(gateway, declared.outputs["wakeUrl"], "POST", declared.outputs["apiKey"]) == (
        500,
        {"message": "Internal server error"},
    )


def test_behind_the_declared_load_balancer_the_api_reports_its_name_and_moves_the_scaling_bounds(plane):
    """Issue 29 in moto, IAM enforced: the NLB, its TCP listener and ip target group exist as
    declared, the service registers its tasks with them, and the declared roles may move
    the lower scaling bound (1 on wake, 0 on kill) and nothing else of it."""
    aws, declared, gateway = plane({"stableEndpoint": "nlb", "maxTasks": "3"})
    outputs, key = declared.outputs, declared.outputs["apiKey"]
    elbv2 = aws.client("elbv2")
    balancer = elbv2.describe_load_balancers()["LoadBalancers"][0]
    assert (balancer["Type"], balancer["Scheme"]) == ("network", "internet-facing")
    assert outputs["endpoint"] == balancer["DNSName"]
    listener = elbv2.describe_listeners(LoadBalancerArn=balancer["LoadBalancerArn"])["Listeners"][0]
    assert (listener["Protocol"], listener["Port"]) == ("TCP", 443)
    group = elbv2.describe_target_groups()["TargetGroups"][0]
    assert (group["Protocol"], group["Port"], group["TargetType"]) == ("TCP", 443, "ip")
    assert listener["DefaultActions"][0]["TargetGroupArn"] == group["TargetGroupArn"]
    attributes = {
        a["Key"]: a["Value"]
        for a in elbv2.describe_target_group_attributes(TargetGroupArn=group["TargetGroupArn"])["Attributes"]
    }
    assert attributes["deregistration_delay.timeout_seconds"] == "20"
    service = aws.client("ecs").describe_services(cluster=outputs["clusterName"], services=[outputs["serviceName"]])[
        "services"
    ][0]
    assert service["loadBalancers"][0]["targetGroupArn"] == group["TargetGroupArn"]

    def bounds():
        target = aws.client("application-autoscaling").describe_scalable_targets(ServiceNamespace="ecs")[
            "ScalableTargets"
        ][0]
        return target["MinCapacity"], target["MaxCapacity"]

    assert bounds() == (0, 3)
    status, body = call(gateway, outputs["wakeUrl"], "POST", key)
    assert status == 200 and body["endpoint"] == balancer["DNSName"] and body["maxTasks"] == 3, body
    assert bounds() == (1, 3) and desired(aws, declared) == 1
    status, body = call(gateway, outputs["statusUrl"], "GET", key)
    assert status == 200 and body["endpoint"] == balancer["DNSName"], body
    status, body = call(gateway, outputs["killUrl"], "POST", key)
    assert status == 200 and body["desiredCount"] == 0, body
    assert bounds() == (0, 3)


def test_a_budget_crossing_end_to_end_with_the_declared_roles(plane):
    """Issue 43: monthlyBudget as declared (its prices in the Lambdas' environment, wake's
    right to read metrics) against invented usage in moto's CloudWatch: under it wake
    starts the server; once the month's bytes sent cross it, sleep stops the server in use
    and wake refuses with 402 and the reason."""
    import datetime
    import time

    from control_front import Scheduler

    aws, declared, gateway = plane({"monthlyBudget": "0.5"})
    outputs, key = declared.outputs, declared.outputs["apiKey"]
    status, body = call(gateway, outputs["wakeUrl"], "POST", key)
    assert status == 200 and desired(aws, declared) == 1, body  # only the fixed lines so far: $0.24 of $0.50
    now = datetime.datetime.now(datetime.UTC)
    dims = [{"Name": "ServiceName", "Value": outputs["serviceName"]}]
    aws.client("cloudwatch").put_metric_data(
        Namespace="Fluidity",
        MetricData=[
            {"MetricName": "ActiveConnections", "Dimensions": dims, "Timestamp": now, "Value": 1.0},
            {"MetricName": "LastActivityEpochSeconds", "Dimensions": dims, "Timestamp": now, "Value": time.time()},
            {"MetricName": "BytesSentToAgents", "Dimensions": dims, "Timestamp": now, "Value": 3.0 * 2**30},
        ],
    )
    decision = Scheduler(declared, gateway.runtime).fire(f"{outputs['serviceName']}-sleep")
    assert decision["action"] == "stopped" and "monthly budget of $0.50 is spent" in decision["reason"], decision
    assert decision["budget"]["gbSent"] == 3.0 and desired(aws, declared) == 0
    status, body = call(gateway, outputs["wakeUrl"], "POST", key)
    assert status == 402 and body["error"].startswith("the monthly budget of $0.50 is spent: $0.5"), body
    assert desired(aws, declared) == 0 and gateway.runtime.errors == []
