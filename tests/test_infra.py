"""The Pulumi program under Pulumi's mocks: every default, the options, the refusals,
and the generated documents checked by moto's ECS and IAM."""

from __future__ import annotations

import json
from pathlib import Path

import pulumi
import pytest
from pulumi_mocks import CERTS, REGION, synthesize

ROOT = Path(__file__).resolve().parent.parent


def unwrap(value):
    """Secret inputs arrive wrapped as {<signature>: ..., "value": v}."""
    if isinstance(value, dict) and "value" in value and len(value) == 2:
        return value["value"]
    return value


@pytest.fixture(scope="module")
def stack():
    return synthesize()


def container(stack) -> dict:
    return json.loads(stack.one("aws:ecs/taskDefinition:TaskDefinition").inputs["containerDefinitions"])[0]


def test_service_side_defaults_equal_the_seeds(stack):
    cluster = stack.one("aws:ecs/cluster:Cluster").inputs
    assert cluster["name"] == "fluidity"
    service = stack.one("aws:ecs/service:Service").inputs
    assert service["name"] == "fluidity-server" and service["desiredCount"] == 0 and "launchType" not in service
    assert service["capacityProviderStrategies"] == [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]  # issue 43
    assert service["cluster"].endswith(":cluster/fluidity")
    assert service["networkConfiguration"] == {
        "assignPublicIp": True,
        "subnets": ["subnet-a", "subnet-b", "subnet-c"],
        "securityGroups": ["fluidity-sg-id"],
    }
    task = stack.one("aws:ecs/taskDefinition:TaskDefinition").inputs
    assert (task["cpu"], task["memory"], task["networkMode"], task["requiresCompatibilities"]) == (
        "256",
        "512",
        "awsvpc",
        ["FARGATE"],
    )
    assert task["runtimePlatform"] == {"cpuArchitecture": "X86_64", "operatingSystemFamily": "LINUX"}
    assert task["executionRoleArn"].endswith("fluidity-execution-role") and task["taskRoleArn"].endswith(
        "fluidity-task-role"
    )

    server = container(stack)
    assert server["name"] == "server" and server["essential"] is True
    assert server["image"] == f"123456789012.dkr.ecr.{REGION}.amazonaws.com/fluidity-server@sha256:" + "ab" * 32
    assert server["portMappings"] == [{"containerPort": 443, "hostPort": 443, "protocol": "tcp"}]
    assert server["logConfiguration"] == {
        "logDriver": "awslogs",
        "options": {"awslogs-group": "/fluidity/server", "awslogs-region": REGION, "awslogs-stream-prefix": "ecs"},
    }
    assert {"name": "FLUIDITY_LOG_LEVEL", "value": "info"} in server["environment"]
    command = server["command"]  # appended to the image's ENTRYPOINT
    assert command[:2] == ["--port", "443"] and {"name": "FLUIDITY_PORT", "value": "443"} in server["environment"]
    assert command[command.index("--metrics-emit-metrics") + 1] == "true"
    assert command[command.index("--metrics-service-name") + 1] == "fluidity-server"
    assert command[command.index("--metrics-namespace") + 1] == "Fluidity"

    logs = stack.one("aws:cloudwatch/logGroup:LogGroup", "fluidity-logs").inputs
    assert (logs["name"], logs["retentionInDays"]) == ("/fluidity/server", 14)
    group = stack.one("aws:ec2/securityGroup:SecurityGroup").inputs
    assert group["vpcId"] == "vpc-default"
    # No fixed ingress by default: the control plane opens the port to the agents that wake it.
    assert "ingress" not in group and group["tags"] == {"fluidity:ingress": "wakers"}
    assert "ingress" in stack.one("aws:ec2/securityGroup:SecurityGroup").ignore_changes
    repo = stack.one("aws:ecr/repository:Repository").inputs
    assert repo["imageScanningConfiguration"] == {"scanOnPush": True}
    lifecycle = json.loads(stack.one("aws:ecr/lifecyclePolicy:LifecyclePolicy").inputs["policy"])
    assert lifecycle["rules"][0]["selection"]["countNumber"] == 2 and lifecycle["rules"][0]["action"] == {
        "type": "expire"
    }


def test_certificates_are_secure_string_parameters_injected_as_secrets(stack):
    parameters = {r.inputs["name"]: r.inputs for r in stack.of_type("aws:ssm/parameter:Parameter")}
    assert set(parameters) == {
        "/fluidity/fluidity-server/server-cert",
        "/fluidity/fluidity-server/server-key",
        "/fluidity/fluidity-server/ca-cert",
    }
    assert all(p["type"] == "SecureString" for p in parameters.values())
    assert unwrap(parameters["/fluidity/fluidity-server/server-key"]["value"]) == CERTS["serverKey"]
    secrets = {s["name"]: s["valueFrom"] for s in container(stack)["secrets"]}
    assert secrets == {
        "FLUIDITY_SERVER_CERT": f"arn:aws:ssm:{REGION}:123456789012:parameter/fluidity/fluidity-server/server-cert",
        "FLUIDITY_SERVER_KEY": f"arn:aws:ssm:{REGION}:123456789012:parameter/fluidity/fluidity-server/server-key",
        "FLUIDITY_CA_CERT": f"arn:aws:ssm:{REGION}:123456789012:parameter/fluidity/fluidity-server/ca-cert",
    }
    definitions = stack.one("aws:ecs/taskDefinition:TaskDefinition").inputs["containerDefinitions"]
    assert "BEGIN" not in definitions  # the PEM text itself never reaches the task definition
    read = json.loads(stack.one("aws:iam/rolePolicy:RolePolicy", "fluidity-execution-parameters").inputs["policy"])
    assert read["Statement"][0]["Action"] == ["ssm:GetParameters"] and sorted(
        read["Statement"][0]["Resource"]
    ) == sorted(secrets.values())
    managed = stack.one("aws:iam/rolePolicyAttachment:RolePolicyAttachment", "fluidity-execution-managed").inputs
    assert managed["policyArn"] == "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"


def test_the_task_calls_no_aws_api_its_metrics_are_emf_lines(stack):
    command = container(stack)["command"]
    assert command[command.index("--metrics-transport") + 1] == "emf"
    task_role = stack.one("aws:iam/role:Role", "fluidity-task-role").name
    attached = [
        r
        for r in stack.of_type("aws:iam/rolePolicy:RolePolicy")
        + stack.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        if "task-role" in json.dumps(r.inputs.get("role", ""))
    ]
    assert task_role and attached == []  # no permission at all: not even cloudwatch:PutMetricData


def test_control_plane_defaults(stack):
    functions = {r.inputs["name"]: r.inputs for r in stack.of_type("aws:lambda/function:Function")}
    assert set(functions) == {
        "fluidity-server-wake",
        "fluidity-server-status",
        "fluidity-server-kill",
        "fluidity-server-sleep",
    }
    for name, function in functions.items():
        role = name.rsplit("-", 1)[1]
        assert function["handler"] == f"lambdas.{role}.handler" and function["runtime"].startswith("python3")
        assert function["environment"]["variables"] == {
            "CLUSTER_NAME": "fluidity",
            "SERVICE_NAME": "fluidity-server",
            "CONTAINER_PORT": "443",
            "METRICS_NAMESPACE": "Fluidity",
            "IDLE_THRESHOLD_MINUTES": "5",
            "LOOKBACK_MINUTES": "10",
            "INGRESS_GROUP_ID": "fluidity-sg-id",  # the server's own security group, opened to wakers
            "CAPACITY": "FARGATE_SPOT",  # on demand when Spot places no task (issue 43)
        }
        archive = function["code"]
        assert isinstance(archive, pulumi.AssetArchive)
        assert set(archive.assets) == {  # only those folders
            f"{folder}/{p.name}" for folder in ("lambdas", "deployment") for p in (ROOT / folder).glob("*.py")
        }
    lambda_logs = [
        r.inputs
        for r in stack.of_type("aws:cloudwatch/logGroup:LogGroup")
        if r.inputs["name"].startswith("/aws/lambda/")
    ]
    assert sorted(group["name"] for group in lambda_logs) == sorted(f"/aws/lambda/{n}" for n in functions)
    assert all(group["retentionInDays"] == 14 for group in lambda_logs)

    methods = {r.name: r.inputs for r in stack.of_type("aws:apigateway/method:Method")}
    assert {(m["httpMethod"], m["apiKeyRequired"]) for m in methods.values()} == {("POST", True), ("GET", True)}
    assert sorted(r.inputs["pathPart"] for r in stack.of_type("aws:apigateway/resource:Resource")) == [
        "kill",
        "status",
        "wake",
    ]
    assert all(r.inputs["type"] == "AWS_PROXY" for r in stack.of_type("aws:apigateway/integration:Integration"))
    plan = stack.one("aws:apigateway/usagePlan:UsagePlan").inputs
    assert plan["throttleSettings"] == {"burstLimit": 10, "rateLimit": 2.0}
    assert plan["quotaSettings"] == {"limit": 20000, "period": "MONTH"}
    assert stack.one("aws:apigateway/usagePlanKey:UsagePlanKey").inputs["keyType"] == "API_KEY"

    schedules = {r.inputs["name"]: r.inputs for r in stack.of_type("aws:scheduler/schedule:Schedule")}
    assert set(schedules) == {"fluidity-server-sleep", "fluidity-server-kill"}  # no wake schedule unless asked
    assert schedules["fluidity-server-sleep"]["scheduleExpression"] == "rate(5 minutes)"
    assert schedules["fluidity-server-kill"]["scheduleExpression"] == "cron(0 23 * * ? *)"
    assert all(
        s["scheduleExpressionTimezone"] == "UTC" and s["flexibleTimeWindow"] == {"mode": "OFF"}
        for s in schedules.values()
    )
    kill_target = schedules["fluidity-server-kill"]["target"]
    assert json.loads(kill_target["input"])["httpMethod"] == "POST"  # the kill handler takes it as a POST /kill
    assert kill_target["arn"].endswith(":fluidity-control-kill") and kill_target["roleArn"].endswith(
        ":fluidity-control-scheduler-role"
    )
    scheduler = json.loads(
        stack.one("aws:iam/rolePolicy:RolePolicy", "fluidity-control-scheduler-policy").inputs["policy"]
    )
    assert scheduler["Statement"][0]["Action"] == ["lambda:InvokeFunction"]
    assert sorted(scheduler["Statement"][0]["Resource"]) == sorted(
        s["target"]["arn"] for s in schedules.values()
    )  # exactly what runs
    permissions = {r.name: r.inputs for r in stack.of_type("aws:lambda/permission:Permission")}
    assert permissions["fluidity-control-wake-invoke"]["sourceArn"].endswith("/*/POST/wake")


def test_outputs(stack):
    outputs = stack.outputs
    assert outputs["clusterName"] == "fluidity" and outputs["serviceName"] == "fluidity-server"
    assert outputs["repositoryUrl"].endswith("/fluidity-server") and outputs["logGroupName"] == "/fluidity/server"
    assert outputs["securityGroupId"] == "fluidity-sg-id" and outputs["apiKey"] == "generated-api-key"
    base = f"https://abc123.execute-api.{REGION}.amazonaws.com/prod"
    assert (outputs["apiUrl"], outputs["wakeUrl"], outputs["statusUrl"], outputs["killUrl"]) == (
        base,
        f"{base}/wake",
        f"{base}/status",
        f"{base}/kill",
    )


def _comparable(stack) -> dict:
    return {
        (r.type, r.name): repr(
            sorted(
                (k, unwrap(v) if not isinstance(v, pulumi.AssetArchive) else sorted(v.assets))
                for k, v in r.inputs.items()
            )
        )
        for r in stack.resources
    }


def test_changing_desired_count_changes_only_the_services_desired_count():
    stack = synthesize({"desiredCount": "0"})
    started = synthesize({"desiredCount": "1"})
    before, after = _comparable(stack), _comparable(started)
    assert before.keys() == after.keys()
    changed = [key for key in before if before[key] != after[key]]
    assert changed == [("aws:ecs/service:Service", "fluidity-service")]
    assert started.one("aws:ecs/service:Service").inputs["desiredCount"] == 1
    old = dict(stack.one("aws:ecs/service:Service").inputs, desiredCount=None)
    new = dict(started.one("aws:ecs/service:Service").inputs, desiredCount=None)
    assert old == new


def test_spot_and_arm64():
    stack = synthesize({"capacity": "FARGATE_SPOT", "cpuArchitecture": "ARM64"})
    service = stack.one("aws:ecs/service:Service").inputs
    assert "launchType" not in service
    assert service["capacityProviderStrategies"] == [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]
    providers = stack.one("aws:ecs/clusterCapacityProviders:ClusterCapacityProviders").inputs
    assert providers["capacityProviders"] == ["FARGATE", "FARGATE_SPOT"]
    task = stack.one("aws:ecs/taskDefinition:TaskDefinition").inputs
    assert task["runtimePlatform"] == {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"}


def test_own_vpc_image_and_no_control_plane():
    stack = synthesize(
        {
            "vpcId": "vpc-mine",
            "publicSubnets": '["subnet-1", "subnet-2"]',
            "containerImage": "example.org/fluidity:1.2",
            "controlPlane": "false",
            "allowedIngressCidr": "203.0.113.0/24",
            "containerPort": "9443",
        }
    )
    assert stack.one("aws:ec2/securityGroup:SecurityGroup").inputs["vpcId"] == "vpc-mine"
    assert stack.one("aws:ec2/securityGroup:SecurityGroup").inputs["ingress"][0]["cidrBlocks"] == ["203.0.113.0/24"]
    assert stack.one("aws:ecs/service:Service").inputs["networkConfiguration"]["subnets"] == ["subnet-1", "subnet-2"]
    assert container(stack)["image"] == "example.org/fluidity:1.2"
    assert container(stack)["portMappings"][0]["containerPort"] == 9443
    assert stack.of_type("aws:lambda/function:Function") == [] and "wakeUrl" not in stack.outputs


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"cpu": "256", "memory": "4096"},
            "Fargate does not offer cpu 256 with memory 4096: with cpu 256, memory must be one of 512, 1024, 2048 MiB",
        ),
        ({"cpu": "300"}, "fluidity:cpu must be one of 256, 512, 1024"),
        ({"allowedIngressCidr": "10.0.0.300/8"}, "fluidity:allowedIngressCidr must be a CIDR"),
        ({"allowedIngressCidr": "10.0.0.1/8"}, "fluidity:allowedIngressCidr must be a CIDR"),
        (
            {"sleepSchedule": "every 5 minutes"},
            "fluidity:sleepSchedule: 'every 5 minutes' is not an EventBridge schedule",
        ),
        ({"killSchedule": "cron(0 23 * * *)"}, "is not an EventBridge schedule"),
        ({"killSchedule": "cron(0 23 * * MON *)"}, "needs '?'"),
        ({"sleepSchedule": "rate(1 minutes)"}, "not a valid rate"),
        ({"capacity": "EC2"}, "fluidity:capacity must be one of FARGATE, FARGATE_SPOT"),
        ({"cpuArchitecture": "arm"}, "fluidity:cpuArchitecture must be one of X86_64, ARM64"),
        ({"desiredCount": "yes"}, "fluidity:desiredCount must be a whole number"),
        ({"logRetentionDays": "10"}, "fluidity:logRetentionDays must be one of"),
        ({"vpcId": "vpc-1"}, "fluidity:publicSubnets is required when fluidity:vpcId is set"),
        ({"containerPort": "70000"}, "fluidity:containerPort must be between 1 and 65535"),
    ],
)
def test_invalid_values_stop_the_program_with_a_clear_message(config, message):
    with pytest.raises(pulumi.RunError) as raised:
        synthesize(config)
    assert message in str(raised.value)


def test_missing_certificates_say_how_to_set_them():
    with pytest.raises(
        pulumi.RunError,
        match=r"fluidity:serverCert is not set: pulumi config set --secret serverCert < certs/server.pem",
    ):
        synthesize(certs={})


# -- what AWS itself would say about the generated documents (moto's ECS and IAM) -------------


def test_container_definitions_are_accepted_by_ecs(stack, aws):
    for config in ({}, {"capacity": "FARGATE_SPOT", "cpuArchitecture": "ARM64"}):
        from moto_stack import register_task_definition

        task = (stack if not config else synthesize(config)).one("aws:ecs/taskDefinition:TaskDefinition").inputs
        registered = register_task_definition(aws.client("ecs"), task)
        assert registered["containerDefinitions"][0]["name"] == "server"
        assert registered["containerDefinitions"][0]["secrets"][0]["valueFrom"].startswith("arn:aws:ssm:")


def _statements(document: dict) -> list[dict]:
    statements = document["Statement"]
    return statements if isinstance(statements, list) else [statements]


def test_every_policy_is_valid_and_nothing_mutating_is_granted_on_star(stack, aws):
    iam = aws.client("iam")
    documents = [json.loads(r.inputs["policy"]) for r in stack.of_type("aws:iam/rolePolicy:RolePolicy")]
    trust = [json.loads(r.inputs["assumeRolePolicy"]) for r in stack.of_type("aws:iam/role:Role")]
    assert (
        len(documents) == 6 and len(trust) == 8
    )  # + the scheduler's; API Gateway's logging role has a managed policy; the task role none
    for index, document in enumerate(documents):
        iam.create_policy(
            PolicyName=f"fluidity-{index}", PolicyDocument=json.dumps(document)
        )  # moto validates the grammar
    for index, document in enumerate(trust):
        iam.create_role(RoleName=f"fluidity-{index}", AssumeRolePolicyDocument=json.dumps(document))
    for document in documents:
        for statement in _statements(document):
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            if "*" in resources:
                assert not {"ecs:UpdateService", "ssm:GetParameters", "ecs:TagResource"} & set(actions), statement
                assert all(a.split(":")[1].startswith(("Describe", "List", "Get", "PutMetricData")) for a in actions), (
                    statement
                )
    by_role = {r.name: json.loads(r.inputs["policy"]) for r in stack.of_type("aws:iam/rolePolicy:RolePolicy")}
    status_actions = {a for s in _statements(by_role["fluidity-control-status-policy"]) for a in s["Action"]}
    assert "ecs:UpdateService" not in status_actions  # status only reads
    update = [s for s in _statements(by_role["fluidity-control-wake-policy"]) if "ecs:UpdateService" in s["Action"]]
    assert update[0]["Resource"] == "arn:aws:ecs:eu-west-1:123456789012:service/fluidity-server"


def test_an_open_ingress_cidr_is_warned_about(capfd, caplog):
    synthesize()
    default = capfd.readouterr().err + caplog.text
    assert "open to the whole internet" not in default  # the default opens the port to wakers only
    caplog.clear()
    synthesize({"allowedIngressCidr": "0.0.0.0/0"})
    opened = capfd.readouterr().err + caplog.text
    assert "fluidity:allowedIngressCidr is 0.0.0.0/0: port 443 is open to the whole internet" in opened
    caplog.clear()
    synthesize({"allowedIngressCidr": "203.0.113.0/24"})
    narrowed = capfd.readouterr().err + caplog.text
    assert "open to the whole internet" not in narrowed


def test_the_task_declares_the_images_own_health_check(stack):
    """ECS ignores an image's HEALTHCHECK: the task definition carries the same command."""
    import re
    from pathlib import Path

    declared = container(stack)["healthCheck"]
    dockerfile = (Path(__file__).parent.parent / "Dockerfile").read_text()
    image_command = json.loads(re.search(r"^HEALTHCHECK .* CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert declared["command"] == ["CMD", *image_command]
    assert declared["interval"] >= 5 and declared["startPeriod"] >= 30 and declared["retries"] >= 1


def test_desired_count_has_one_owner():
    """Unset: created at 0, the tag names the control plane and Pulumi ignores later changes
    (a `pulumi up --refresh` after an agent woke the server leaves it running). Set: Pulumi's."""
    service = synthesize().one("aws:ecs/service:Service")
    assert service.inputs["desiredCount"] == 0
    assert service.inputs["tags"]["fluidity:desired-count-owner"] == "control-plane"
    assert "desiredCount" in service.ignore_changes
    for count in ("0", "1"):
        owned = synthesize({"desiredCount": count}).one("aws:ecs/service:Service")
        assert owned.inputs["desiredCount"] == int(count)
        assert owned.inputs["tags"]["fluidity:desired-count-owner"] == "pulumi"
        assert "desiredCount" not in owned.ignore_changes


@pytest.mark.parametrize("architecture, platform", [("X86_64", "linux/amd64"), ("ARM64", "linux/arm64")])
def test_pulumi_up_builds_and_pushes_the_image_and_the_task_names_it_by_digest(architecture, platform):
    from pathlib import Path

    stack = synthesize({"cpuArchitecture": architecture}, image_digest="sha256:" + "12" * 32)
    image = stack.one("docker-build:index:Image")
    root = str(Path(__file__).resolve().parent.parent)
    assert unwrap(image.inputs["context"]) == {"location": root}
    assert unwrap(image.inputs["dockerfile"]) == {"location": f"{root}/Dockerfile"}
    assert (Path(root) / "Dockerfile").is_file()
    assert image.inputs["platforms"] == [platform] and image.inputs["push"] is True
    registry = unwrap(image.inputs["registries"])[0]
    assert (
        registry["address"] == f"123456789012.dkr.ecr.{REGION}.amazonaws.com"
        and registry["username"] == "AWS"
        and registry["password"] == "ecr-token"
    )
    repository = f"123456789012.dkr.ecr.{REGION}.amazonaws.com/fluidity-server"
    assert image.inputs["tags"] == [f"{repository}:latest"]
    assert container(stack)["image"] == f"{repository}@sha256:" + "12" * 32
    assert stack.outputs["image"] == f"{repository}@sha256:" + "12" * 32
    rebuilt = synthesize({"cpuArchitecture": architecture}, image_digest="sha256:" + "34" * 32)
    before = stack.one("aws:ecs/taskDefinition:TaskDefinition").inputs["containerDefinitions"]
    after = rebuilt.one("aws:ecs/taskDefinition:TaskDefinition").inputs["containerDefinitions"]
    assert before != after  # a new image is a new task definition revision


def test_container_image_overrides_the_build():
    stack = synthesize({"containerImage": "public.ecr.aws/example/fluidity:1.2"})
    assert stack.of_type("docker-build:index:Image") == []
    assert container(stack)["image"] == "public.ecr.aws/example/fluidity:1.2"


@pytest.mark.processes
@pytest.mark.parametrize("digest", ["", "latest", "sha256:xyz"])
def test_an_unreadable_digest_stops_the_program_in_one_line(digest):
    # In a process of its own: a program that fails inside an apply leaves Pulumi's runtime
    # with work that would fail the next program run in the same process.
    import subprocess
    import sys

    code = (
        f"from pulumi_mocks import synthesize\ntry:\n    synthesize(image_digest={digest!r})\nexcept Exception as e:\n "
        f"   print(e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent
    )
    cause = [line for line in done.stdout.splitlines() if "digest cannot be read" in line]
    assert len(cause) == 1 and "fluidity-server" in cause[0], done.stdout + done.stderr  # one line names the cause
    assert "Traceback" not in done.stdout


def test_ingress_for_wakers_is_the_default_and_a_cidr_replaces_it():
    """By default nothing is open: the wake role may open exactly the server's port on
    exactly its security group; with allowedIngressCidr the group has that one rule and
    the Lambdas leave it alone."""
    stack = synthesize()
    policies = {
        r.name: json.loads(unwrap(r.inputs["policy"]))
        for r in stack.of_type("aws:iam/rolePolicy:RolePolicy")
        if r.name.startswith("fluidity-control-")
    }
    group_arn = "arn:aws:ec2:eu-west-1:123456789012:security-group/fluidity-sg-id"
    wake = {a: s["Resource"] for s in _statements(policies["fluidity-control-wake-policy"]) for a in s["Action"]}
    assert (
        wake["ec2:AuthorizeSecurityGroupIngress"] == group_arn and wake["ec2:RevokeSecurityGroupIngress"] == group_arn
    )
    for role in ("kill", "sleep"):
        actions = {
            a: s["Resource"] for s in _statements(policies[f"fluidity-control-{role}-policy"]) for a in s["Action"]
        }
        assert (
            actions["ec2:RevokeSecurityGroupIngress"] == group_arn
            and "ec2:AuthorizeSecurityGroupIngress" not in actions
        )
    status = {a for s in _statements(policies["fluidity-control-status-policy"]) for a in s["Action"]}
    assert not any(a.endswith("SecurityGroupIngress") for a in status)

    fixed = synthesize({"allowedIngressCidr": "203.0.113.0/24"})
    group = fixed.one("aws:ec2/securityGroup:SecurityGroup")
    assert [(r["fromPort"], r["cidrBlocks"]) for r in group.inputs["ingress"]] == [(443, ["203.0.113.0/24"])]
    assert group.inputs["tags"] == {"fluidity:ingress": "cidr"} and "ingress" not in group.ignore_changes
    for function in fixed.of_type("aws:lambda/function:Function"):
        assert "INGRESS_GROUP_ID" not in function.inputs["environment"]["variables"]


# -- operations: alarms, dashboard, access logs, schedules in a time zone, outputs (issue 20) --


def test_one_alarm_reads_two_metrics_that_cover_the_control_planes_errors(stack):
    """Errors of every Lambda and the API's 5xx reach one metric through metric filters; the
    alarm reads it and the sleep Lambda's throttles (issue 43: one alarm at $0.20, not nine)."""
    from deployment.metric_names import CONTROL_PLANE_ERRORS

    topic = stack.one("aws:sns/topic:Topic").inputs
    assert topic["name"] == "fluidity-server-alarms"
    assert stack.of_type("aws:sns/topicSubscription:TopicSubscription") == []  # no e-mail unless asked
    alarm = stack.one("aws:cloudwatch/metricAlarm:MetricAlarm").inputs
    assert alarm["name"] == "fluidity-server-control-plane-errors"
    assert (alarm["threshold"], alarm["comparisonOperator"], alarm["treatMissingData"]) == (
        1,
        "GreaterThanOrEqualToThreshold",
        "notBreaching",
    )
    assert alarm["alarmActions"] == alarm["okActions"] and alarm["alarmActions"][0].endswith(
        "fluidity-monitoring-alarms"
    )
    queries = {q["id"]: q for q in alarm["metricQueries"]}
    assert queries["total"]["expression"] == "FILL(errors, 0) + FILL(throttles, 0)" and queries["total"]["returnData"]
    read = {(q["metric"]["namespace"], q["metric"]["metricName"]) for q in queries.values() if "metric" in q}
    assert read == {("Fluidity", CONTROL_PLANE_ERRORS), ("AWS/Lambda", "Throttles")}
    assert queries["throttles"]["metric"]["dimensions"] == {"FunctionName": "fluidity-server-sleep"}
    assert all(q["metric"]["stat"] == "Sum" and q["metric"]["period"] == 300 for q in queries.values() if "metric" in q)
    filters = {
        f.inputs["logGroupName"]: f.inputs for f in stack.of_type("aws:cloudwatch/logMetricFilter:LogMetricFilter")
    }
    lambda_groups = {
        stack.one("aws:lambda/function:Function", f"fluidity-control-{role}").inputs["name"]
        for role in ("wake", "status", "kill", "sleep")
    }
    assert set(filters) == {f"/aws/lambda/{name}" for name in lambda_groups} | {
        "/aws/apigateway/fluidity-server-control"
    }
    for group, spec in filters.items():
        assert spec["metricTransformation"] == {
            "namespace": "Fluidity",
            "name": CONTROL_PLANE_ERRORS,
            "value": "1",
            "unit": "Count",
        }
        assert spec["pattern"] == (
            '{ $.status = "5*" }' if "apigateway" in group else '?"[ERROR]" ?"Task timed out" ?"Runtime exited"'
        )
    access = stack.one("aws:apigateway/stage:Stage").inputs["accessLogSettings"]["format"]
    assert json.loads(access)["status"] == "$context.status"  # the field the 5xx filter reads
    emailed = synthesize({"alarmEmail": "ops@example.com"}).one("aws:sns/topicSubscription:TopicSubscription").inputs
    assert (emailed["protocol"], emailed["endpoint"]) == ("email", "ops@example.com")


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"dashboard": "true"},
        {"monitoring": "false"},
        {"controlPlane": "false"},
        {"monitoring": "false", "dashboard": "true"},
    ],
)
def test_the_cost_model_prices_the_alarms_and_dashboards_the_stack_declares(config):
    """Counted from what the program registers, so `fluidity cost` cannot drift from it."""
    from deployment.stack_settings import from_config
    from tunnel.ops import costs, rates

    stack = synthesize(config)
    alarm_metrics = sum(
        len([q for q in a.inputs.get("metricQueries", []) if "metric" in q]) or 1
        for a in stack.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
    )
    dashboards = len(stack.of_type("aws:cloudwatch/dashboard:Dashboard"))
    est = costs.estimate(from_config(costs._Config(config)), costs.Usage(), "eu-west-1")
    priced = {line.item.split(":")[0]: line.high for line in est.stopped}
    assert priced.get("monitoring", 0.0) == round(alarm_metrics * rates.ALARM_MONTH, 4)
    assert priced.get("dashboard", 0.0) == round(dashboards * rates.DASHBOARD_MONTH, 4)
    assert ("dashboardName" in stack.outputs) == bool(dashboards)


def test_dashboard_shows_the_servers_metrics_decisions_errors_and_calls(stack):
    """Opt-in (`dashboard: true`): $3.00 a month at list price, so the default stack has none."""
    from deployment.metric_names import ACTIVE_CONNECTIONS, LAST_ACTIVITY

    assert stack.of_type("aws:cloudwatch/dashboard:Dashboard") == []
    stack = synthesize({"dashboard": "true"})
    dashboard = stack.one("aws:cloudwatch/dashboard:Dashboard").inputs
    body = json.loads(dashboard["dashboardBody"])
    flat = json.dumps(body)
    assert dashboard["dashboardName"] == "fluidity-server"
    assert ["Fluidity", ACTIVE_CONNECTIONS, "ServiceName", "fluidity-server"] in body["widgets"][0]["properties"][
        "metrics"
    ]
    assert LAST_ACTIVITY in flat and "EPOCH(m1) - m1" in flat
    query = next(w for w in body["widgets"] if w["type"] == "log")["properties"]["query"]
    for role in ("wake", "kill", "sleep"):
        assert f"'/aws/lambda/fluidity-server-{role}'" in query
    assert (
        '"Errors", "FunctionName", "fluidity-server-wake"' in flat
        and '"Count", "ApiName", "fluidity-server-control"' in flat
    )


def test_api_access_logs_throttle_and_quota():
    stack = synthesize(
        {"apiRateLimit": "5", "apiBurstLimit": "20", "apiMonthlyQuota": "5000", "logRetentionDays": "30"}
    )
    group = stack.one("aws:cloudwatch/logGroup:LogGroup", "fluidity-control-access-logs").inputs
    assert (group["name"], group["retentionInDays"]) == ("/aws/apigateway/fluidity-server-control", 30)
    stage = stack.one("aws:apigateway/stage:Stage").inputs["accessLogSettings"]
    assert stage["destinationArn"].endswith(":log-group:/aws/apigateway/fluidity-server-control")
    assert {"requestId", "ip", "status", "path"} <= set(json.loads(stage["format"]))
    plan = stack.one("aws:apigateway/usagePlan:UsagePlan").inputs
    assert plan["throttleSettings"] == {"burstLimit": 20, "rateLimit": 5.0} and plan["quotaSettings"] == {
        "limit": 5000,
        "period": "MONTH",
    }


def test_schedules_in_the_users_time_zone_and_a_working_hours_wake():
    stack = synthesize(
        {
            "scheduleTimezone": "Europe/Berlin",
            "wakeSchedule": "cron(0 8 ? * MON-FRI *)",
            "killSchedule": "cron(0 19 ? * MON-FRI *)",
        }
    )
    schedules = {r.inputs["name"]: r.inputs for r in stack.of_type("aws:scheduler/schedule:Schedule")}
    assert set(schedules) == {"fluidity-server-sleep", "fluidity-server-kill", "fluidity-server-wake"}
    assert {s["scheduleExpressionTimezone"] for s in schedules.values()} == {"Europe/Berlin"}
    wake = schedules["fluidity-server-wake"]
    assert wake["scheduleExpression"] == "cron(0 8 ? * MON-FRI *)" and wake["target"]["arn"].endswith(
        ":fluidity-control-wake"
    )
    event = json.loads(wake["target"]["input"])
    assert (event["httpMethod"], event["path"]) == ("POST", "/wake")  # the same path as an agent's wake
    assert schedules["fluidity-server-kill"]["scheduleExpression"] == "cron(0 19 ? * MON-FRI *)"
    policy = json.loads(
        stack.one("aws:iam/rolePolicy:RolePolicy", "fluidity-control-scheduler-policy").inputs["policy"]
    )
    assert any(arn.endswith(":fluidity-control-wake") for arn in policy["Statement"][0]["Resource"])


@pytest.mark.parametrize(
    "config, message",
    [
        ({"scheduleTimezone": "Mars/Olympus"}, "fluidity:scheduleTimezone must be an IANA time zone"),
        ({"wakeSchedule": "every morning"}, "fluidity:wakeSchedule"),
        ({"alarmEmail": "not-an-address"}, "fluidity:alarmEmail must be an e-mail address"),
        ({"apiMonthlyQuota": "lots"}, "fluidity:apiMonthlyQuota must be a whole number"),
        ({"monthlyBudget": "five"}, "fluidity:monthlyBudget must be a number"),
        ({"monthlyBudget": "0"}, "fluidity:monthlyBudget must be between 0.01 and"),
        ({"monthlyBudget": "nan"}, "fluidity:monthlyBudget must be between 0.01 and"),
        ({"monthlyBudget": "5", "controlPlane": "false"}, "fluidity:monthlyBudget needs the control plane"),
    ],
)
def test_bad_operations_settings_stop_the_program_naming_the_key(config, message):
    with pytest.raises(Exception) as raised:
        synthesize(config)
    assert message in str(raised.value) and len(str(raised.value).strip().splitlines()) == 1, str(raised.value)


def test_the_seeds_outputs(stack):
    outputs = stack.outputs
    assert outputs["clusterArn"] == "arn:aws:ecs:eu-west-1:123456789012:cluster/fluidity"
    assert outputs["taskDefinitionArn"].endswith(":fluidity-task")
    assert outputs["executionRoleArn"].endswith(":fluidity-execution-role") and outputs["taskRoleArn"].endswith(
        ":fluidity-task-role"
    )
    for role in ("wake", "status", "kill", "sleep"):
        assert outputs[f"{role}RoleArn"].endswith(f":fluidity-control-{role}-role")
    assert outputs["alarmTopicArn"].endswith("fluidity-monitoring-alarms") and "dashboardName" not in outputs
    assert synthesize({"dashboard": "true"}).outputs["dashboardName"] == "fluidity-server"  # opt-in
    command = outputs["publicIpCommand"]
    assert command.startswith("aws --region eu-west-1 ecs list-tasks --cluster fluidity --service-name fluidity-server")
    assert "describe-network-interfaces" in command and "Association.PublicIp" in command


def test_monitoring_can_be_left_out_for_the_cheapest_stack():
    """The alarm costs $0.20 a month at list price beyond the free tier; a dashboard asked for goes too."""
    stack = synthesize({"monitoring": "false", "dashboard": "true"})
    for kind in (
        "aws:cloudwatch/metricAlarm:MetricAlarm",
        "aws:cloudwatch/dashboard:Dashboard",
        "aws:sns/topic:Topic",
        "aws:cloudwatch/logMetricFilter:LogMetricFilter",
    ):
        assert stack.of_type(kind) == []
    assert "alarmTopicArn" not in stack.outputs and stack.outputs["wakeUrl"].endswith("/wake")


def test_a_blank_schedule_is_its_default_not_a_missing_one():
    """`pulumi config set fluidity:sleepSchedule ' '` keeps the sleep rule (it used to become None)."""
    from deployment.stack_settings import from_config
    from tunnel.ops import costs

    settings = from_config(costs._Config({"sleepSchedule": "  ", "killSchedule": "", "wakeSchedule": " "}))
    assert settings.sleep_schedule == "rate(5 minutes)"
    assert settings.kill_schedule == "cron(0 23 * * ? *)"
    assert settings.wake_schedule is None  # no wake schedule unless one is given


# -- a stable endpoint and more than one task (issue 29) ---------------------------------------


def test_by_default_there_is_no_load_balancer_and_no_scaling(stack):
    for kind in ("aws:lb/loadBalancer:LoadBalancer", "aws:lb/targetGroup:TargetGroup", "aws:lb/listener:Listener"):
        assert stack.of_type(kind) == []
    assert stack.of_type("aws:appautoscaling/target:Target") == []
    assert "endpoint" not in stack.outputs
    service = stack.one("aws:ecs/service:Service").inputs
    assert "loadBalancers" not in service and service["deploymentMinimumHealthyPercent"] == 0


def test_an_nlb_passes_the_servers_port_through_to_the_tasks_and_its_name_is_what_agents_dial():
    stack = synthesize({"stableEndpoint": "nlb"})
    balancer = stack.one("aws:lb/loadBalancer:LoadBalancer")
    assert balancer.inputs["loadBalancerType"] == "network" and balancer.inputs["internal"] is False
    assert balancer.inputs["subnets"] == ["subnet-a", "subnet-b", "subnet-c"]
    groups = {g.name: g for g in stack.of_type("aws:ec2/securityGroup:SecurityGroup")}
    assert balancer.inputs["securityGroups"] == [groups["fluidity-lb-sg"].id]
    # Agents come in through the balancer's group, opened to wakers by the control plane...
    assert groups["fluidity-lb-sg"].inputs["tags"] == {"fluidity:ingress": "wakers"}
    assert "ingress" in groups["fluidity-lb-sg"].ignore_changes
    # ...and the task takes the port only from the balancer (its traffic and health checks).
    task_rules = groups["fluidity-sg"].inputs["ingress"]
    assert [(r["fromPort"], r["toPort"], r["securityGroups"]) for r in task_rules] == [
        (443, 443, [groups["fluidity-lb-sg"].id])
    ]
    assert "tags" not in groups["fluidity-sg"].inputs
    targets = stack.one("aws:lb/targetGroup:TargetGroup").inputs
    assert (targets["protocol"], targets["port"], targets["targetType"]) == ("TCP", 443, "ip")
    assert targets["preserveClientIp"] == "true"
    drain = container(stack)["command"]
    assert targets["deregistrationDelay"] >= int(drain[drain.index("--drain-timeout") + 1].rstrip("s"))
    assert targets["healthCheck"]["protocol"] == "TCP" and targets["healthCheck"]["port"] == "traffic-port"
    listener = stack.one("aws:lb/listener:Listener").inputs
    assert (listener["protocol"], listener["port"]) == ("TCP", 443)  # TLS passes through: mTLS stays end to end
    assert listener["defaultActions"] == [
        {"type": "forward", "targetGroupArn": stack.one("aws:lb/targetGroup:TargetGroup").state["arn"]}
    ]
    service = stack.one("aws:ecs/service:Service").inputs
    assert service["loadBalancers"] == [
        {
            "targetGroupArn": listener["defaultActions"][0]["targetGroupArn"],
            "containerName": "server",
            "containerPort": 443,
        }
    ]
    assert (service["deploymentMinimumHealthyPercent"], service["deploymentMaximumPercent"]) == (100, 200)
    name = balancer.state["dnsName"]
    assert stack.outputs["endpoint"] == name
    for function in stack.of_type("aws:lambda/function:Function"):
        variables = function.inputs["environment"]["variables"]
        assert variables["STABLE_ENDPOINT"] == name
        assert variables["INGRESS_GROUP_ID"] == groups["fluidity-lb-sg"].id


def test_max_tasks_scales_on_cpu_between_bounds_the_control_plane_moves(aws):
    stack = synthesize({"stableEndpoint": "nlb", "maxTasks": "4"})
    for index, resource in enumerate(stack.of_type("aws:iam/rolePolicy:RolePolicy")):
        aws.client("iam").create_policy(PolicyName=f"scaled-{index}", PolicyDocument=resource.inputs["policy"])
    target = stack.one("aws:appautoscaling/target:Target")
    assert target.inputs["resourceId"] == "service/fluidity/fluidity-server"
    assert (target.inputs["minCapacity"], target.inputs["maxCapacity"]) == (0, 4)
    assert "minCapacity" in target.ignore_changes  # the control plane's: 1 while running, 0 to stop
    policy = stack.one("aws:appautoscaling/policy:Policy").inputs
    tracking = policy["targetTrackingScalingPolicyConfiguration"]
    assert policy["policyType"] == "TargetTrackingScaling"
    assert tracking["predefinedMetricSpecification"]["predefinedMetricType"] == "ECSServiceAverageCPUUtilization"
    policies = {
        r.name: json.loads(unwrap(r.inputs["policy"]))
        for r in stack.of_type("aws:iam/rolePolicy:RolePolicy")
        if r.name.startswith("fluidity-control-")
    }
    for role in ("wake", "kill", "sleep", "status"):
        granted = {
            a: s["Resource"] for s in _statements(policies[f"fluidity-control-{role}-policy"]) for a in s["Action"]
        }
        if role == "status":
            assert "application-autoscaling:RegisterScalableTarget" not in granted
        else:
            assert granted["application-autoscaling:RegisterScalableTarget"] == target.state["arn"]
    for function in stack.of_type("aws:lambda/function:Function"):
        assert function.inputs["environment"]["variables"]["MAX_TASKS"] == "4"


@pytest.mark.parametrize(
    "config, message",
    [
        ({"maxTasks": "0"}, "fluidity:maxTasks must be between 1 and 10, got 0"),
        ({"maxTasks": "two"}, "fluidity:maxTasks must be a whole number"),
        ({"stableEndpoint": "alb"}, "fluidity:stableEndpoint must be one of none, nlb, got 'alb'"),
        ({"maxTasks": "3"}, "set fluidity:stableEndpoint nlb"),
        ({"maxTasks": "3", "stableEndpoint": "nlb", "desiredCount": "1"}, "remove fluidity:desiredCount"),
        ({"stableEndpoint": "nlb", "vpcId": "vpc-1"}, "fluidity:publicSubnets is required"),
    ],
)
def test_bad_endpoint_and_scaling_combinations_stop_before_anything_is_created(config, message):
    with pytest.raises(pulumi.RunError) as raised:
        synthesize(config)
    assert message in str(raised.value)


def test_the_balancers_name_is_one_elbv2_accepts_whatever_the_service_is_called():
    stack = synthesize({"stableEndpoint": "nlb", "serviceName": "my_fluidity_server_for_the_whole_family_2026"})
    for kind in ("aws:lb/loadBalancer:LoadBalancer", "aws:lb/targetGroup:TargetGroup"):
        name = stack.one(kind).inputs["name"]
        assert name == "my-fluidity-server-for-the-whole" and len(name) <= 32


def test_behind_the_nlb_a_fixed_cidr_goes_on_the_balancers_group():
    stack = synthesize({"stableEndpoint": "nlb", "allowedIngressCidr": "203.0.113.0/24"})
    groups = {g.name: g for g in stack.of_type("aws:ec2/securityGroup:SecurityGroup")}
    balancer = groups["fluidity-lb-sg"]
    assert [(r["fromPort"], r["cidrBlocks"]) for r in balancer.inputs["ingress"]] == [(443, ["203.0.113.0/24"])]
    assert balancer.inputs["tags"] == {"fluidity:ingress": "cidr"}
    assert [r.get("cidrBlocks") for r in groups["fluidity-sg"].inputs["ingress"]] == [None]  # only the balancer
    for function in stack.of_type("aws:lambda/function:Function"):
        assert "INGRESS_GROUP_ID" not in function.inputs["environment"]["variables"]


def test_a_monthly_budget_reaches_every_lambda_with_the_prices_fluidity_cost_uses():
    """Issue 43: the Lambdas weigh the month with the cost model's own figures, and wake may
    read the metrics it weighs it from."""
    from deployment.stack_settings import from_config
    from tunnel.ops import costs, rates

    config = {"monthlyBudget": "5", "cpuArchitecture": "ARM64", "capacity": "FARGATE_SPOT"}
    stack = synthesize(config)
    est = costs.estimate(from_config(costs._Config(config)), costs.Usage(hours_per_month=100), None)
    fargate = next(line for line in est.running if line.item.startswith("Fargate"))
    for role in ("wake", "status", "kill", "sleep"):
        env = stack.one("aws:lambda/function:Function", f"fluidity-control-{role}").inputs["environment"]["variables"]
        assert env["MONTHLY_BUDGET"] == "5"
        assert float(env["BUDGET_TASK_HOUR"]) == pytest.approx(
            fargate.high / 100 / (1 - rates.SPOT_DISCOUNT[0]) + 0.005, abs=1e-5
        )  # on demand: Spot's discount is not promised
        assert float(env["BUDGET_GB_SENT"]) == rates.DATA_TRANSFER_OUT_GB
        assert float(env["BUDGET_FIXED"]) == pytest.approx(est.total(est.stopped, "high"), abs=1e-4)
    wake_policy = json.loads(
        stack.one("aws:iam/rolePolicy:RolePolicy", "fluidity-control-wake-policy").inputs["policy"]
    )
    reads = [s for s in wake_policy["Statement"] if s["Sid"] == "ReadMetrics"]
    assert reads and reads[0]["Action"] == ["cloudwatch:GetMetricStatistics"]
    unbudgeted = synthesize({})
    env = unbudgeted.one("aws:lambda/function:Function", "fluidity-control-wake").inputs["environment"]["variables"]
    assert not [name for name in env if "BUDGET" in name]
    policy = json.loads(
        unbudgeted.one("aws:iam/rolePolicy:RolePolicy", "fluidity-control-wake-policy").inputs["policy"]
    )
    assert not [s for s in policy["Statement"] if s["Sid"] == "ReadMetrics"]  # no budget: wake reads no metric
