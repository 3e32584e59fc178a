"""The wake / status / kill / sleep handlers against moto's ECS, EC2 and CloudWatch."""

from __future__ import annotations

import datetime
import json
import time

import pytest

from deployment.clients import client
from deployment.settings import from_env
from lambdas import kill, sleep, status, wake


def api_event(method: str, path: str, **extra) -> dict:
    event = {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": {"x-api-key": "k"},
        "body": None,
        "isBase64Encoded": False,
        "requestContext": {"stage": "prod"},
    }
    event.update(extra)
    return event


def call(handler, method: str, path: str, **extra) -> tuple[int, dict]:
    answer = handler(api_event(method, path, **extra), None)
    assert answer["headers"]["Content-Type"] == "application/json"
    return answer["statusCode"], json.loads(answer["body"])


def scheduled_event() -> dict:
    return {
        "version": "0",
        "id": "1",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "time": "2026-11-26T12:00:00Z",
        "resources": [],
        "detail": {},
    }


def put_metrics(aws, active: float, last_activity: float, when: float | None = None) -> None:
    stamp = datetime.datetime.fromtimestamp(when or time.time(), datetime.UTC)
    dims = [{"Name": "ServiceName", "Value": "fluidity-server"}]
    aws.client("cloudwatch").put_metric_data(
        Namespace="Fluidity",
        MetricData=[
            {
                "MetricName": "ActiveConnections",
                "Dimensions": dims,
                "Timestamp": stamp,
                "Value": active,
                "Unit": "Count",
            },
            {
                "MetricName": "LastActivityEpochSeconds",
                "Dimensions": dims,
                "Timestamp": stamp,
                "Value": last_activity,
                "Unit": "Seconds",
            },
        ],
    )


# -- wake / status / kill ------------------------------------------------------------------


def test_wake_starts_a_stopped_service_once(aws):
    service = aws.make_service(desired=0)
    code, body = call(status.handler, "GET", "/status")
    assert (code, body["status"], body["desiredCount"], body["publicIp"], body["port"]) == (
        200,
        "stopped",
        0,
        None,
        443,
    )

    code, body = call(wake.handler, "POST", "/wake")
    assert (code, body["status"], body["desiredCount"], body["runningCount"]) == (200, "starting", 1, 0)
    assert aws.desired_count(service) == 1

    aws.reconcile(service)  # ECS starts the task
    code, body = call(wake.handler, "POST", "/wake")  # idempotent: nothing changes
    assert (code, body["status"], body["desiredCount"], body["runningCount"], body["publicIp"]) == (
        200,
        "running",
        1,
        1,
        "127.0.0.1",
    )
    assert len(aws.service_tasks(service)) == 1


def test_status_reports_the_running_tasks_public_ip(aws, monkeypatch):
    monkeypatch.setenv("CONTAINER_PORT", "9443")
    service = aws.make_service(desired=1)
    aws.reconcile(service, public_ip="127.0.0.9")
    code, body = call(status.handler, "GET", "/status")
    assert code == 200
    assert body["status"] == "running" and body["publicIp"] == "127.0.0.9" and body["port"] == 9443
    assert body["publicDnsName"] == "ip-127-0-0-9.ec2.internal"  # the ENI's, as moto names it
    assert body["taskStatus"] == "RUNNING"


def test_a_task_is_running_only_once_ecs_finds_it_healthy(aws):
    service = aws.make_service(desired=1, health_check=True)
    aws.reconcile(service)
    for health, expected in (("UNKNOWN", "starting"), ("UNHEALTHY", "starting"), ("HEALTHY", "running")):
        aws.set_health(service, health)
        code, body = call(status.handler, "GET", "/status")
        assert (code, body["status"], body["health"]) == (200, expected, health), body
        assert (body["publicIp"] is None) == (expected != "running")


def test_status_of_a_running_task_without_a_public_ip_is_null(aws):
    service = aws.make_service(desired=1)
    aws.reconcile(service, public_ip="")
    code, body = call(status.handler, "GET", "/status")
    assert (code, body["status"], body["publicIp"]) == (200, "running", None)


def test_kill_sets_desired_count_zero(aws):
    service = aws.make_service(desired=1)
    aws.reconcile(service)
    code, body = call(kill.handler, "POST", "/kill")
    assert (code, body["desiredCount"]) == (200, 0)
    assert body["status"] in ("stopping", "stopped")
    assert aws.desired_count(service) == 0
    aws.reconcile(service)
    code, body = call(status.handler, "GET", "/status")
    assert (body["status"], body["runningCount"], body["publicIp"]) == ("stopped", 0, None)
    code, body = call(kill.handler, "POST", "/kill")  # again: still fine
    assert (code, body["status"]) == (200, "stopped")


def test_http_api_v2_events_are_understood(aws):
    aws.make_service(desired=0)
    event = {
        "version": "2.0",
        "rawPath": "/status",
        "headers": {},
        "requestContext": {"http": {"method": "GET", "path": "/status"}},
    }
    answer = status.handler(event, None)
    assert answer["statusCode"] == 200 and json.loads(answer["body"])["status"] == "stopped"


@pytest.mark.parametrize(
    "event, reason",
    [
        (None, "got NoneType"),
        ("POST /wake", "got str"),
        ([], "got list"),
        ({}, "no httpMethod"),
        ({"httpMethod": 7}, "no httpMethod"),
        ({"httpMethod": "POST", "headers": "x-api-key: k"}, "headers must be an object"),
        ({"httpMethod": "POST", "body": "{not json"}, "body must be JSON"),
        ({"httpMethod": "POST", "body": "[1, 2]"}, "JSON object"),
        ({"httpMethod": "POST", "body": "!!", "isBase64Encoded": True}, "base64"),
        ({"httpMethod": "POST", "body": 12}, "body must be a string"),
    ],
)
def test_malformed_events_get_400_with_a_reason(aws, event, reason):
    service = aws.make_service(desired=0)
    for handler in (wake.handler, kill.handler, status.handler):
        answer = handler(event, None)
        assert answer["statusCode"] == 400
        assert reason in json.loads(answer["body"])["error"]
    assert aws.desired_count(service) == 0


def test_wrong_method_gets_405(aws):
    service = aws.make_service(desired=0)
    code, body = call(wake.handler, "GET", "/wake")
    assert code == 405 and "POST" in body["error"]
    code, body = call(status.handler, "POST", "/status")
    assert code == 405
    assert aws.desired_count(service) == 0


def test_a_json_body_is_accepted(aws):
    aws.make_service(desired=0)
    code, body = call(wake.handler, "POST", "/wake", body='{"reason": "laptop"}')
    assert (code, body["desiredCount"]) == (200, 1)


@pytest.mark.parametrize("handler, method", [(wake.handler, "POST"), (status.handler, "GET"), (kill.handler, "POST")])
def test_unknown_service_is_502_with_reason(aws, monkeypatch, handler, method):
    aws.make_service(desired=0)
    for cluster, service, expected in (
        ("fluidity", "nope", "'nope' not found"),
        ("missing-cluster", "fluidity-server", "ClusterNotFoundException"),
    ):
        monkeypatch.setenv("CLUSTER_NAME", cluster)
        monkeypatch.setenv("SERVICE_NAME", service)
        code, body = call(handler, method, "/x")
        assert code == 502, body
        assert expected in body["error"]


def test_unreachable_aws_is_502(aws, monkeypatch):
    from support import free_port

    from deployment import clients

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    clients.forget()
    code, body = call(wake.handler, "POST", "/wake")
    assert code == 502 and "EndpointConnectionError" in body["error"]


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("CONTAINER_PORT", "http", "CONTAINER_PORT must be a number"),
        ("IDLE_THRESHOLD_MINUTES", "0", "between"),
        ("CLUSTER_NAME", "", "CLUSTER_NAME must be set"),
    ],
)
def test_misconfigured_function_is_500_with_reason(aws, monkeypatch, name, value, message):
    aws.make_service(desired=0)
    monkeypatch.setenv(name, value)
    code, body = call(status.handler, "GET", "/status")
    assert code == 500 and message in body["error"]


# -- sleep ---------------------------------------------------------------------------------


def woken_service(aws):
    """A service started through the wake handler, with its task running."""
    service = aws.make_service(desired=0)
    assert call(wake.handler, "POST", "/wake")[0] == 200
    aws.reconcile(service)
    return service


def test_sleep_leaves_a_recently_active_server_alone(aws):
    service = woken_service(aws)
    put_metrics(aws, active=0, last_activity=time.time() - 30)
    decision = sleep.handler(scheduled_event(), None)
    assert decision["action"] == "none" and "threshold" in decision["reason"], decision
    assert decision["activeConnectionsMax"] == 0
    assert aws.desired_count(service) == 1


def test_sleep_leaves_a_server_with_an_agent_connected_alone(aws):
    service = woken_service(aws)
    put_metrics(aws, active=1, last_activity=time.time() - 3600)  # connected but quiet
    decision = sleep.handler(scheduled_event(), None)
    assert decision["action"] == "none" and "agent(s) connected" in decision["reason"]
    assert aws.desired_count(service) == 1


def test_sleep_stops_a_server_idle_past_the_threshold(aws):
    service = woken_service(aws)
    # Reported activity is stale; the wake itself is fresh, so look from a moment after
    # the threshold has passed since it, with the metrics still inside the window.
    now = time.time() + 6 * 60
    put_metrics(aws, active=0, last_activity=time.time() - 20 * 60, when=now - 60)
    decision = sleep.decide(client("ecs"), client("cloudwatch"), from_env(), now)
    assert decision["action"] == "stopped", decision
    assert decision["idleSeconds"] >= 6 * 60 and decision["lastActivityEpochSeconds"] is not None
    assert aws.desired_count(service) == 0


def test_sleep_uses_the_reported_activity_when_it_is_the_newest(aws):
    service = woken_service(aws)
    now = time.time() + 6 * 60
    put_metrics(aws, active=0, last_activity=now - 60, when=now - 30)  # active a minute ago
    decision = sleep.decide(client("ecs"), client("cloudwatch"), from_env(), now)
    assert decision["action"] == "none" and decision["idleSeconds"] == 60, decision
    assert aws.desired_count(service) == 1


def test_sleep_leaves_a_just_woken_server_without_datapoints_alone(aws):
    service = woken_service(aws)
    decision = sleep.handler(scheduled_event(), None)
    assert decision["action"] == "none", decision
    assert decision["lastActivityEpochSeconds"] is None and decision["activeConnectionsMax"] is None
    assert aws.desired_count(service) == 1


def test_sleep_stops_a_server_that_never_reported_long_after_it_started(aws):
    service = woken_service(aws)
    decision = sleep.decide(client("ecs"), client("cloudwatch"), from_env(), time.time() + 3600)
    assert decision["action"] == "stopped" and decision["lastActivityEpochSeconds"] is None, decision
    assert decision["idleSeconds"] >= 3600 - 5
    assert aws.desired_count(service) == 0


def test_sleep_on_a_stopped_service_changes_nothing(aws):
    service = aws.make_service(desired=0)
    decision = sleep.handler(scheduled_event(), None)
    assert decision == {**decision, "action": "none", "reason": "already stopped"}
    assert aws.desired_count(service) == 0


def test_sleep_reports_errors_instead_of_raising(aws, monkeypatch):
    assert sleep.handler("tick", None)["action"] == "error"
    monkeypatch.setenv("SERVICE_NAME", "nope")
    aws.make_service(desired=1)
    decision = sleep.handler(scheduled_event(), None)
    assert decision["action"] == "error" and "not found" in decision["reason"]


def test_a_service_whose_desired_count_pulumi_owns_is_left_alone(aws):
    """The stack config sets desiredCount: wake and kill answer 409 saying so, sleep does nothing."""
    service = aws.make_service(desired=1)
    ecs = aws.client("ecs")
    arn = ecs.describe_services(cluster=service.cluster, services=[service.name])["services"][0]["serviceArn"]
    ecs.tag_resource(resourceArn=arn, tags=[{"key": "fluidity:desired-count-owner", "value": "pulumi"}])
    for handler in (kill.handler,):
        code, body = call(handler, "POST", "/kill")
        assert code == 409 and "pulumi config set desiredCount" in body["error"], body
    assert aws.desired_count(service) == 1
    code, body = call(status.handler, "GET", "/status")
    assert body["desiredCountOwner"] == "pulumi"
    decision = sleep.decide(ecs, aws.client("cloudwatch"), from_env(), time.time() + 86400)
    assert decision["action"] == "none" and "Pulumi" in decision["reason"]
    ecs.update_service(cluster=service.cluster, service=service.name, desiredCount=0)
    code, body = call(wake.handler, "POST", "/wake")
    assert code == 409 and aws.desired_count(service) == 0


# -- ingress for the agents that woke the server ----------------------------------------------


@pytest.fixture
def wakers(aws, monkeypatch):
    """A service whose security group the control plane opens to its wakers."""
    service = aws.make_service(desired=0)
    monkeypatch.setenv("INGRESS_GROUP_ID", service.security_group)
    monkeypatch.setenv("INGRESS_MAX_RULES", "3")
    return service


def v1_event(method: str, path: str, source_ip: str) -> dict:
    """What API Gateway's REST API (proxy integration) sends."""
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": {"x-api-key": "k"},
        "body": None,
        "isBase64Encoded": False,
        "requestContext": {
            "stage": "prod",
            "httpMethod": method,
            "identity": {"sourceIp": source_ip, "userAgent": "fluidity"},
        },
    }


def v2_event(method: str, path: str, source_ip: str) -> dict:
    """What an HTTP API (payload 2.0) sends."""
    return {
        "version": "2.0",
        "rawPath": path,
        "headers": {},
        "isBase64Encoded": False,
        "requestContext": {"http": {"method": method, "path": path, "sourceIp": source_ip}, "stage": "$default"},
    }


def open_to(aws, service) -> dict[str, str]:
    group = aws.client("ec2").describe_security_groups(GroupIds=[service.security_group])["SecurityGroups"][0]
    return {
        r["CidrIp"]: r.get("Description", "")
        for p in group["IpPermissions"]
        if p.get("FromPort") == 443
        for r in p.get("IpRanges", [])
    }


def invoke(handler, event) -> tuple[int, dict]:
    answer = handler(event)
    return answer["statusCode"], json.loads(answer["body"])


def test_wake_opens_the_port_to_the_caller_only(aws, wakers):
    code, body = invoke(wake.handler, v1_event("POST", "/wake", "203.0.113.7"))
    assert code == 200 and body["ingress"] == "203.0.113.7/32" and body["callerIp"] == "203.0.113.7"
    rules = open_to(aws, wakers)
    assert list(rules) == ["203.0.113.7/32"] and rules["203.0.113.7/32"].startswith("fluidity waker 20")
    code, body = invoke(wake.handler, v2_event("POST", "/wake", "198.51.100.9"))  # a second agent, HTTP API shape
    assert code == 200 and set(open_to(aws, wakers)) == {"203.0.113.7/32", "198.51.100.9/32"}
    code, body = invoke(wake.handler, v1_event("POST", "/wake", "203.0.113.7"))  # again: refreshed, not duplicated
    assert code == 200 and len(open_to(aws, wakers)) == 2
    code, body = invoke(status.handler, v1_event("GET", "/status", "192.0.2.44"))
    assert body["callerIp"] == "192.0.2.44" and "192.0.2.44/32" not in open_to(aws, wakers)  # status only tells


def test_stopping_closes_the_port_and_leaves_other_rules_alone(aws, wakers):
    ec2 = aws.client("ec2")
    ec2.authorize_security_group_ingress(
        GroupId=wakers.security_group,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 443,
                "ToPort": 443,
                "IpRanges": [{"CidrIp": "192.0.2.0/24", "Description": "office (by hand)"}],
            }
        ],
    )
    invoke(wake.handler, v1_event("POST", "/wake", "203.0.113.7"))
    code, body = invoke(kill.handler, v1_event("POST", "/kill", "203.0.113.7"))
    assert code == 200 and body["ingressRulesRemoved"] == 1
    assert open_to(aws, wakers) == {"192.0.2.0/24": "office (by hand)"}


def test_sleep_closes_the_port_when_it_stops_the_server(aws, wakers):
    invoke(wake.handler, v1_event("POST", "/wake", "203.0.113.7"))
    aws.reconcile(wakers)
    decision = sleep.decide(
        aws.client("ecs"), aws.client("cloudwatch"), from_env(), time.time() + 86400, aws.client("ec2")
    )
    assert decision["action"] == "stopped" and decision["ingressRulesRemoved"] == 1
    assert open_to(aws, wakers) == {}


def test_many_wakers_stay_within_the_limit_and_stale_rules_are_pruned(aws, wakers, monkeypatch):
    from deployment import ingress

    ec2 = aws.client("ec2")
    old = time.time() - 3 * 86400
    ec2.authorize_security_group_ingress(
        GroupId=wakers.security_group,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 443,
                "ToPort": 443,
                "IpRanges": [{"CidrIp": "192.0.2.1/32", "Description": ingress.label(old)}],
            }
        ],
    )
    for n in range(2, 8):  # max 3 rules: each new waker pushes out the oldest
        code, _ = invoke(wake.handler, v1_event("POST", "/wake", f"203.0.113.{n}"))
        assert code == 200
        rules = open_to(aws, wakers)
        assert len(rules) <= 3 and f"203.0.113.{n}/32" in rules
        assert "192.0.2.1/32" not in rules  # stale (three days old): pruned at the first wake
        time.sleep(1.05)  # labels have one-second resolution: keep the order unambiguous
    assert set(open_to(aws, wakers)) == {"203.0.113.5/32", "203.0.113.6/32", "203.0.113.7/32"}


def test_a_wake_without_a_source_address_still_wakes(aws, wakers):
    event = v1_event("POST", "/wake", "")
    code, body = invoke(wake.handler, event)
    assert code == 200 and body["ingress"] is None and aws.desired_count(wakers) == 1
    assert open_to(aws, wakers) == {}


def test_wake_kill_and_sleep_log_their_decisions_for_the_dashboard(aws, caplog):
    """The dashboard's Logs Insights widget shows lines matching /decision:/ from these functions."""
    import logging

    service = aws.make_service(desired=0)
    caplog.set_level(logging.INFO, logger="fluidity.lambdas")
    call(wake.handler, "POST", "/wake")
    call(kill.handler, "POST", "/kill")
    sleep.handler({"source": "fluidity.schedule"})
    decisions = {}
    for record in caplog.records:
        text = record.getMessage()
        if "decision: " in text:
            role, _, payload = text.partition(" decision: ")
            decisions[role] = json.loads(payload)
    assert decisions["wake"]["action"] == "started" and decisions["kill"]["action"] == "stopped"
    assert decisions["sleep"]["action"] == "none" and aws.desired_count(service) == 0


# -- a stable endpoint and more than one task (issue 29) ---------------------------------------


def _bounds(aws) -> tuple[int, int]:
    targets = aws.client("application-autoscaling").describe_scalable_targets(ServiceNamespace="ecs")["ScalableTargets"]
    assert [t["ResourceId"] for t in targets] == ["service/fluidity/fluidity-server"]
    return targets[0]["MinCapacity"], targets[0]["MaxCapacity"]


def test_behind_the_load_balancer_status_reports_its_name_as_the_endpoint(aws, monkeypatch):
    monkeypatch.setenv("STABLE_ENDPOINT", "fluidity-server-0123.elb.eu-west-1.amazonaws.com")
    service = aws.make_service(desired=1)
    aws.reconcile(service)
    code, body = call(status.handler, "GET", "/status")
    assert (code, body["status"], body["endpoint"]) == (
        200,
        "running",
        "fluidity-server-0123.elb.eu-west-1.amazonaws.com",
    )
    monkeypatch.delenv("STABLE_ENDPOINT")
    assert call(status.handler, "GET", "/status")[1]["endpoint"] is None


def test_with_scaling_wake_raises_the_lower_bound_to_one_and_every_stop_lowers_it_first(aws, monkeypatch):
    """maxTasks 3: Application Auto Scaling moves the count between 1 and 3 while the server
    runs; wake sets the lower bound to 1, sleep and kill set it to 0 before desiredCount 0,
    and a wake while running changes nothing."""
    monkeypatch.setenv("MAX_TASKS", "3")
    service = aws.make_service(desired=0)
    scaling = aws.client("application-autoscaling")
    scaling.register_scalable_target(  # as the stack declares it
        ServiceNamespace="ecs",
        ResourceId="service/fluidity/fluidity-server",
        ScalableDimension="ecs:service:DesiredCount",
        MinCapacity=0,
        MaxCapacity=3,
    )
    code, body = call(wake.handler, "POST", "/wake")
    assert (code, body["desiredCount"], body["maxTasks"]) == (200, 1, 3)
    assert _bounds(aws) == (1, 3)
    aws.client("ecs").update_service(cluster="fluidity", service="fluidity-server", desiredCount=2)  # scaled out
    aws.reconcile(service)
    code, body = call(wake.handler, "POST", "/wake")
    assert (code, body["desiredCount"], body["runningCount"]) == (200, 2, 2)  # a wake while running: nothing
    code, body = call(kill.handler, "POST", "/kill")
    assert (code, body["desiredCount"]) == (200, 0) and _bounds(aws) == (0, 3)
    call(wake.handler, "POST", "/wake")
    assert _bounds(aws) == (1, 3)
    aws.reconcile(service)
    decision = sleep.decide(
        aws.client("ecs"), aws.client("cloudwatch"), from_env(), time.time() + 3600, aws.client("ec2")
    )
    assert decision["action"] == "stopped", decision
    assert aws.desired_count(service) == 0 and _bounds(aws) == (0, 3)


def test_sleep_stops_several_tasks_only_when_every_one_of_them_is_idle(aws):
    """Each task reports under the same ServiceName: one task with an agent keeps them all."""
    service = woken_service(aws)
    now = time.time() + 6 * 60
    stale = now - 3600
    put_metrics(aws, active=0, last_activity=stale, when=now - 60)  # task 1: idle
    put_metrics(aws, active=2, last_activity=stale, when=now - 60)  # task 2: two agents, quiet
    decision = sleep.decide(aws.client("ecs"), aws.client("cloudwatch"), from_env(), now, aws.client("ec2"))
    assert decision["action"] == "none" and "agent(s) connected" in decision["reason"], decision
    assert aws.desired_count(service) == 1


# -- a monthly budget (issue 43) -------------------------------------------------------------


def put_usage(aws, minutes: list[float], sent: float = 0.0) -> None:
    """Invented usage, as the server reports it: an ActiveConnections point each minute a
    task ran (at these moments), and BytesSentToAgents spread over them."""
    dims = [{"Name": "ServiceName", "Value": "fluidity-server"}]
    data = []
    for moment in minutes:
        stamp = datetime.datetime.fromtimestamp(moment, datetime.UTC)
        data.append({"MetricName": "ActiveConnections", "Dimensions": dims, "Timestamp": stamp, "Value": 1.0})
        data.append(
            {"MetricName": "BytesSentToAgents", "Dimensions": dims, "Timestamp": stamp, "Value": sent / len(minutes)}
        )
    for start in range(0, len(data), 500):
        aws.client("cloudwatch").put_metric_data(Namespace="Fluidity", MetricData=data[start : start + 500])


def budget_env(monkeypatch, limit: str, task_hour: str = "0.2", gb: str = "0.09", fixed: str = "0.24") -> None:
    for name, value in (
        ("MONTHLY_BUDGET", limit),
        ("BUDGET_TASK_HOUR", task_hour),
        ("BUDGET_GB_SENT", gb),
        ("BUDGET_FIXED", fixed),
    ):
        monkeypatch.setenv(name, value)


def this_months_minutes(now: float, count: int) -> list[float]:
    """`count` one-minute moments before `now`, none before this month began."""
    from deployment.budget import month_start

    start = month_start(now).timestamp()
    return [m for m in (now - 60 * (i + 1) for i in range(count)) if m >= start]


def test_the_month_so_far_is_task_hours_bytes_sent_and_the_fixed_lines(aws):
    from deployment.budget import GB, Budget, month_so_far, month_start

    now = time.time()
    minutes = this_months_minutes(now, 120)
    put_usage(aws, minutes, sent=3 * GB)
    last_month = month_start(now).timestamp() - 86400
    put_usage(aws, [last_month - 60 * i for i in range(600)], sent=500 * GB)  # last month's: not this one's
    so_far = month_so_far(aws.client("cloudwatch"), "Fluidity", "fluidity-server", Budget(5.0, 0.25, 0.09, 0.24), now)
    hours = len(minutes) / 60
    assert so_far["taskHours"] == round(hours, 2) and so_far["gbSent"] == (3.0 if minutes else 0.0)
    assert so_far["cost"] == round(hours * 0.25 + (3 * 0.09 if minutes else 0) + 0.24, 2)
    assert so_far["spent"] is False and so_far["month"] == month_start(now).strftime("%Y-%m")


def test_past_the_budget_wake_refuses_with_402_and_a_reason_until_it_is_raised(aws, monkeypatch):
    service = aws.make_service(desired=0)
    now = time.time()
    put_usage(aws, this_months_minutes(now, 30) or [now], sent=0)
    budget_env(monkeypatch, "1", task_hour="600", fixed="0.24")  # an invented price: any minute spends it
    code, body = call(wake.handler, "POST", "/wake")
    assert code == 402, body
    assert (
        body["error"].startswith("the monthly budget of $1.00 is spent: $")
        and "until the budget is raised" in body["error"]
    )
    assert body["budget"]["spent"] is True and body["budget"]["taskHours"] > 0
    assert aws.desired_count(service) == 0  # nothing started
    monkeypatch.setenv("MONTHLY_BUDGET", "1000000")  # `pulumi config set monthlyBudget` and `pulumi up`
    code, body = call(wake.handler, "POST", "/wake")
    assert code == 200 and aws.desired_count(service) == 1


def test_past_the_budget_sleep_stops_a_server_in_use_and_the_next_month_wakes_again(aws, monkeypatch):
    from deployment.budget import next_month

    service = aws.make_service(desired=1)
    aws.reconcile(service)
    now = time.time()
    put_metrics(aws, active=1, last_activity=now - 30, when=now - 30)  # an agent connected: not idle
    put_usage(aws, this_months_minutes(now, 30) or [now], sent=0)
    budget_env(monkeypatch, "1", task_hour="600")
    decision = sleep.decide(client("ecs"), client("cloudwatch"), from_env(), now)
    assert decision["action"] == "stopped" and decision["reason"].startswith("the monthly budget of $1.00 is spent")
    assert decision["budget"]["spent"] and aws.desired_count(service) == 0
    # The month turns: only the fixed lines count, which are under the budget.
    turned = next_month(now).timestamp() + 3600
    code, _ = call(wake.handler, "POST", "/wake")
    assert code == 402
    from deployment.budget import month_so_far

    settings = from_env()
    assert settings.budget is not None
    again = month_so_far(client("cloudwatch"), "Fluidity", "fluidity-server", settings.budget, turned)
    assert again["spent"] is False and again["taskHours"] == 0 and again["cost"] == 0.24


def test_under_the_budget_wake_and_sleep_go_on_as_before(aws, monkeypatch):
    service = aws.make_service(desired=0)
    budget_env(monkeypatch, "5")
    code, body = call(wake.handler, "POST", "/wake")
    assert code == 200 and body["status"] == "starting" and aws.desired_count(service) == 1
    aws.reconcile(service)
    now = time.time()
    put_metrics(aws, active=1, last_activity=now - 30, when=now - 30)
    decision = sleep.decide(client("ecs"), client("cloudwatch"), from_env(), now)
    assert decision["action"] == "none" and decision["budget"]["spent"] is False, decision


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("MONTHLY_BUDGET", "lots", "MONTHLY_BUDGET must be a number"),
        ("MONTHLY_BUDGET", "0", "MONTHLY_BUDGET must be between"),
        ("BUDGET_TASK_HOUR", "nan", "BUDGET_TASK_HOUR must be between"),
    ],
)
def test_a_misconfigured_budget_is_500_with_reason(aws, monkeypatch, name, value, message):
    aws.make_service(desired=0)
    budget_env(monkeypatch, "5")
    monkeypatch.setenv(name, value)
    code, body = call(wake.handler, "POST", "/wake")
    assert code == 500 and message in body["error"], body


# -- Fargate Spot, and on-demand when it has no room (issue 43) --------------------------------


def strategy(aws, service) -> list[str]:
    """Where the service asks ECS to place its task, by the control plane's record: moto
    (5.2) accepts a service's capacityProviderStrategy but does not report it back."""
    found = aws.client("ecs").describe_services(cluster=service.cluster, services=[service.name], include=["TAGS"])
    tags = {t["key"]: t["value"] for t in found["services"][0].get("tags", [])}
    return ["FARGATE"] if tags.get("fluidity:capacity") == "on-demand" else ["FARGATE_SPOT"]


def test_a_spot_task_that_is_never_placed_falls_back_to_on_demand_and_says_so(aws, monkeypatch):
    """ECS places no task when Spot has no room: after two minutes wanted with none, the
    service asks for on-demand FARGATE; the next wake of the stopped server asks for Spot."""
    from lambdas import capacity

    monkeypatch.setenv("CAPACITY", "FARGATE_SPOT")
    service = aws.make_service(desired=0, spot=True)
    assert strategy(aws, service) == ["FARGATE_SPOT"]
    code, body = call(wake.handler, "POST", "/wake")
    assert code == 200 and body["capacity"] is None and aws.desired_count(service) == 1
    # Spot has no room: no task appears (nothing reconciles). Soon after, a second wake changes nothing ...
    code, body = call(wake.handler, "POST", "/wake")
    assert code == 200 and body["capacity"] is None and strategy(aws, service) == ["FARGATE_SPOT"]
    # ... two minutes on, sleep moves it to on-demand instead of calling it idle.
    later = time.time() + capacity.SPOT_PATIENCE + 5
    decision = sleep.decide(client("ecs"), client("cloudwatch"), from_env(), later)
    assert decision["action"] == "on-demand" and decision["reason"].startswith("Fargate Spot placed no task in"), (
        decision
    )
    assert "running on demand (FARGATE) until the server next stops" in decision["reason"]
    assert strategy(aws, service) == ["FARGATE"] and aws.desired_count(service) == 1
    aws.reconcile(service)  # on demand has room
    assert len(aws.service_tasks(service)) == 1
    call(kill.handler, "POST", "/kill")
    aws.reconcile(service)
    code, body = call(wake.handler, "POST", "/wake")  # a new start: Spot first again
    assert code == 200 and strategy(aws, service) == ["FARGATE_SPOT"] and aws.desired_count(service) == 1


def test_a_wake_finds_spot_stuck_and_falls_back_itself(aws, monkeypatch):
    """The agent wakes again when its wait runs out: that wake, two minutes on, moves it."""
    from lambdas import capacity

    monkeypatch.setenv("CAPACITY", "FARGATE_SPOT")
    service = aws.make_service(desired=0, spot=True)
    call(wake.handler, "POST", "/wake")
    code, body = wake.wake(api_event("POST", "/wake"), now=time.time() + capacity.SPOT_PATIENCE + 5)
    assert code == 200 and (body["capacity"] or "").startswith("Fargate Spot placed no task"), body
    assert strategy(aws, service) == ["FARGATE"]
    code, body = wake.wake(api_event("POST", "/wake"), now=time.time() + 2 * capacity.SPOT_PATIENCE)
    assert code == 200 and body["capacity"] is None  # once


def test_on_demand_stacks_and_running_spot_tasks_are_left_alone(aws, monkeypatch):
    from lambdas import capacity

    service = aws.make_service(desired=1)
    later = time.time() + capacity.SPOT_PATIENCE + 5
    decision = sleep.decide(client("ecs"), client("cloudwatch"), from_env(), later)
    assert decision["action"] != "on-demand" and strategy(aws, service) == ["FARGATE_SPOT"]  # untouched
    monkeypatch.setenv("CAPACITY", "FARGATE_SPOT")
    spot = aws.make_service(name="spot-server", desired=1, spot=True)
    monkeypatch.setenv("SERVICE_NAME", "spot-server")
    aws.reconcile(spot)  # Spot placed it
    put_metrics(aws, active=1, last_activity=time.time(), when=time.time())
    decision = sleep.decide(client("ecs"), client("cloudwatch"), from_env(), later)
    assert decision["action"] == "none" and strategy(aws, spot) == ["FARGATE_SPOT"], decision
