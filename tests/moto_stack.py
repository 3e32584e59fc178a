"""The Pulumi program deployed into moto: Pulumi's mocks, answered by creating each resource
in moto's server and returning the ids and ARNs moto gave it.

So every reference the program wires between resources (a role's ARN in a task
definition, the security group in a Lambda's environment, the parameters in a policy) is
a real moto identifier, and what runs later (ECS's part, the Lambdas) meets exactly what
was declared. Types moto does not serve here (Lambda, API Gateway, Scheduler, ECR,
alarms) are only recorded: the rehearsal's own fronts read them from the declarations.

moto evaluates IAM by action only (its ECS, EC2, SSM, Logs and CloudWatch requests carry
the resource `*`, and it knows none of the condition keys), so each declared policy is
installed with its actions and without its Resource and Condition scoping: an action a
role lacks fails the rehearsal, a wrong ARN does not (tests/test_infra.py pins those).
CloudWatch signs as `monitoring`, which moto takes as the action's prefix: both are kept.
"""

from __future__ import annotations

import inspect
import json
import secrets
import urllib.request
from dataclasses import dataclass

from aws import MotoAws
from pulumi.runtime import mocks as pulumi_mocks
from pulumi_mocks import ACCOUNT, RecordingMocks, Registered

MOTO_ACTION_PREFIX = {"cloudwatch": "monitoring"}  # IAM's prefix -> the signing name moto uses
SPECIAL_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's marker of a wrapped value (a secret)


def unwrap(value):
    """Inputs with secrets replaced by their values (the mocks receive them wrapped)."""
    if isinstance(value, dict):
        if SPECIAL_SIG in value and "value" in value:
            return unwrap(value["value"])
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def moto_policy(document: str) -> str:
    """What moto can enforce of a declared policy: its actions, on every resource."""
    policy = json.loads(document)
    statements = []
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        actions = actions + [
            f"{MOTO_ACTION_PREFIX[a.split(':')[0]]}:{a.split(':')[1]}"
            for a in actions
            if a.split(":")[0] in MOTO_ACTION_PREFIX
        ]
        statements.append({"Effect": statement["Effect"], "Action": actions, "Resource": "*"})
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def allow_fargate_task_memory() -> bool:
    """moto 5.x sums each container's `memory` in RunTask, which a Fargate task definition may
    leave to the task (ours does): RunTask then fails with a TypeError inside moto. Where
    that function is the one this was written against, a container without memory counts
    as 0 (Fargate reserves the task's memory anyway); elsewhere moto is left alone.
    Reported upstream: upstream/moto-fargate-container-memory.md."""
    from moto.ecs.models import EC2ContainerServiceBackend

    current = EC2ContainerServiceBackend.__dict__.get("_calculate_task_resource_requirements")
    if getattr(current, "__func__", None) is not None and getattr(current.__func__, "fluidity_fix", False):
        return True
    if not isinstance(current, staticmethod) or list(inspect.signature(current.__func__).parameters) != [
        "task_definition"
    ]:
        return False
    original = current.__func__

    def calculate(task_definition):
        try:
            return original(task_definition)
        except TypeError:
            containers = task_definition.container_definitions
            if not task_definition.memory or any(
                "memory" in c or "memoryReservation" in c or "Memory" in c for c in containers
            ):
                raise
            for container in containers:
                container["memoryReservation"] = 0
            try:
                return original(task_definition)
            finally:
                for container in containers:
                    del container["memoryReservation"]

    calculate.fluidity_fix = True
    EC2ContainerServiceBackend._calculate_task_resource_requirements = staticmethod(calculate)
    return True


def register_task_definition(ecs, inputs: dict) -> dict:
    """RegisterTaskDefinition with a declared TaskDefinition's inputs, containers verbatim."""
    platform = inputs.get("runtimePlatform") or {}
    return ecs.register_task_definition(
        family=inputs["family"],
        cpu=inputs["cpu"],
        memory=inputs["memory"],
        networkMode=inputs["networkMode"],
        requiresCompatibilities=inputs["requiresCompatibilities"],
        executionRoleArn=inputs["executionRoleArn"],
        taskRoleArn=inputs["taskRoleArn"],
        runtimePlatform={
            "operatingSystemFamily": platform["operatingSystemFamily"],
            "cpuArchitecture": platform["cpuArchitecture"],
        },
        containerDefinitions=json.loads(inputs["containerDefinitions"]),
    )["taskDefinition"]


class MotoMocks(RecordingMocks):
    """Creates what it can in moto; answers the program's lookups from moto too."""

    def __init__(self, aws: MotoAws, image_digest: str) -> None:
        super().__init__(image_digest)
        self.aws = aws
        self.region = aws.region
        self.declared_policies: dict[str, dict] = {}  # role name -> policy name -> document, as declared

    def call(self, args: pulumi_mocks.MockCallArgs):
        ec2 = self.aws.client("ec2")
        if args.token == "aws:index/getRegion:getRegion":
            return {"name": self.region, "region": self.region, "id": self.region}
        if args.token == "aws:ec2/getVpc:getVpc":
            vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]
            return {"id": vpc["VpcId"], "cidrBlock": vpc["CidrBlock"], "default": True}
        if args.token == "aws:ec2/getSubnets:getSubnets":
            filters = [{"Name": f["name"], "Values": f["values"]} for f in args.args.get("filters", [])]
            ids = [s["SubnetId"] for s in ec2.describe_subnets(Filters=filters)["Subnets"]]
            return {"ids": ids, "id": self.region, "filters": args.args.get("filters")}
        return super().call(args)

    def answer(self, args: pulumi_mocks.MockResourceArgs):
        resource_id, state = super().answer(args)  # a fake state to start from
        make = getattr(self, "_" + args.typ.split(":")[-1].lower(), None) if args.typ.startswith("aws:") else None
        if make is not None:
            resource_id, real = make(args.name, unwrap(dict(args.inputs)))
            state.update(real)
        if args.typ == "aws:lambda/function:Function":
            state["arn"] = f"arn:aws:lambda:{self.region}:{ACCOUNT}:function:{args.inputs['name']}"
            state["invokeArn"] = (
                f"arn:aws:apigateway:{self.region}:lambda:path/2015-03-31/functions/{state['arn']}/invocations"
            )
        if args.typ == "aws:apigateway/apiKey:ApiKey":
            state["value"] = secrets.token_urlsafe(30)
        return resource_id, state

    # -- one method per AWS type moto serves (named after the Pulumi type's last part) ------
    def _parameter(self, name: str, inputs: dict):
        ssm = self.aws.client("ssm")
        ssm.put_parameter(
            Name=inputs["name"], Type=inputs["type"], Value=inputs["value"], Description=inputs.get("description", "")
        )
        return inputs["name"], {"arn": ssm.get_parameter(Name=inputs["name"])["Parameter"]["ARN"]}

    def _cluster(self, name: str, inputs: dict):
        arn = self.aws.client("ecs").create_cluster(clusterName=inputs["name"])["cluster"]["clusterArn"]
        return arn, {"arn": arn}

    def _loggroup(self, name: str, inputs: dict):
        logs = self.aws.client("logs")
        logs.create_log_group(logGroupName=inputs["name"])
        if inputs.get("retentionInDays"):
            logs.put_retention_policy(logGroupName=inputs["name"], retentionInDays=int(inputs["retentionInDays"]))
        return inputs["name"], {"arn": f"arn:aws:logs:{self.region}:{ACCOUNT}:log-group:{inputs['name']}"}

    def _role(self, name: str, inputs: dict):
        role = self.aws.client("iam").create_role(RoleName=name, AssumeRolePolicyDocument=inputs["assumeRolePolicy"])[
            "Role"
        ]
        return name, {"arn": role["Arn"], "name": name}

    def _rolepolicy(self, name: str, inputs: dict):
        self.declared_policies.setdefault(inputs["role"], {})[name] = json.loads(inputs["policy"])
        self.aws.client("iam").put_role_policy(
            RoleName=inputs["role"], PolicyName=name, PolicyDocument=moto_policy(inputs["policy"])
        )
        return f"{inputs['role']}:{name}", {}

    def _rolepolicyattachment(self, name: str, inputs: dict):
        self.aws.client("iam").attach_role_policy(RoleName=inputs["role"], PolicyArn=inputs["policyArn"])
        return f"{inputs['role']}-{name}", {}

    def _securitygroup(self, name: str, inputs: dict):
        ec2 = self.aws.client("ec2")
        group = ec2.create_security_group(
            GroupName=inputs.get("name", name), Description=inputs["description"], VpcId=inputs["vpcId"]
        )["GroupId"]
        if inputs.get("tags"):
            ec2.create_tags(Resources=[group], Tags=[{"Key": k, "Value": v} for k, v in inputs["tags"].items()])
        for rule in inputs.get("ingress", []):
            ec2.authorize_security_group_ingress(
                GroupId=group,
                IpPermissions=[
                    {
                        "IpProtocol": rule["protocol"],
                        "FromPort": int(rule["fromPort"]),
                        "ToPort": int(rule["toPort"]),
                        "IpRanges": [
                            {"CidrIp": c, "Description": rule.get("description", "")}
                            for c in rule.get("cidrBlocks", [])
                        ],
                        "UserIdGroupPairs": [
                            {"GroupId": g, "Description": rule.get("description", "")}
                            for g in rule.get("securityGroups", [])
                        ],
                    }
                ],
            )
        return group, {"arn": f"arn:aws:ec2:{self.region}:{ACCOUNT}:security-group/{group}"}

    def _taskdefinition(self, name: str, inputs: dict):
        answer = register_task_definition(self.aws.client("ecs"), inputs)
        return inputs["family"], {"arn": answer["taskDefinitionArn"], "revision": answer["revision"]}

    def _service(self, name: str, inputs: dict):
        network = inputs["networkConfiguration"]
        placement = (
            {"launchType": inputs["launchType"]}
            if inputs.get("launchType")
            else {
                "capacityProviderStrategy": [
                    {"capacityProvider": s["capacityProvider"], "weight": int(s.get("weight", 1))}
                    for s in inputs["capacityProviderStrategies"]
                ]
            }
        )
        service = self.aws.client("ecs").create_service(
            cluster=inputs["cluster"],
            serviceName=inputs["name"],
            taskDefinition=inputs["taskDefinition"],
            desiredCount=int(inputs["desiredCount"]),
            networkConfiguration={
                "awsvpcConfiguration": {
                    "subnets": network["subnets"],
                    "securityGroups": network["securityGroups"],
                    "assignPublicIp": "ENABLED" if network.get("assignPublicIp") else "DISABLED",
                }
            },
            deploymentConfiguration={
                "minimumHealthyPercent": int(inputs["deploymentMinimumHealthyPercent"]),
                "maximumPercent": int(inputs["deploymentMaximumPercent"]),
            },
            tags=[{"key": k, "value": v} for k, v in (inputs.get("tags") or {}).items()],
            loadBalancers=[
                {
                    "targetGroupArn": b["targetGroupArn"],
                    "containerName": b["containerName"],
                    "containerPort": int(b["containerPort"]),
                }
                for b in inputs.get("loadBalancers", [])
            ],
            **(
                {"healthCheckGracePeriodSeconds": int(inputs["healthCheckGracePeriodSeconds"])}
                if inputs.get("healthCheckGracePeriodSeconds")
                else {}
            ),
            enableECSManagedTags=bool(inputs.get("enableEcsManagedTags")),
            propagateTags=inputs.get("propagateTags", "NONE"),
            **placement,
        )["service"]
        return service["serviceArn"], {"arn": service["serviceArn"]}

    def _loadbalancer(self, name: str, inputs: dict):
        balancer = self.aws.client("elbv2").create_load_balancer(
            Name=inputs["name"],
            Subnets=inputs["subnets"],
            SecurityGroups=inputs.get("securityGroups", []),
            Scheme="internal" if inputs.get("internal") else "internet-facing",
            Type=inputs["loadBalancerType"],
        )["LoadBalancers"][0]
        return balancer["LoadBalancerArn"], {"arn": balancer["LoadBalancerArn"], "dnsName": balancer["DNSName"]}

    def _targetgroup(self, name: str, inputs: dict):
        check = inputs.get("healthCheck") or {}
        group = self.aws.client("elbv2").create_target_group(
            Name=inputs["name"],
            Protocol=inputs["protocol"],
            Port=int(inputs["port"]),
            VpcId=inputs["vpcId"],
            TargetType=inputs["targetType"],
            HealthCheckProtocol=check.get("protocol", "TCP"),
            HealthCheckPort=str(check.get("port", "traffic-port")),
            HealthCheckIntervalSeconds=int(check.get("interval", 30)),
            HealthyThresholdCount=int(check.get("healthyThreshold", 3)),
            UnhealthyThresholdCount=int(check.get("unhealthyThreshold", 3)),
        )["TargetGroups"][0]
        self.aws.client("elbv2").modify_target_group_attributes(
            TargetGroupArn=group["TargetGroupArn"],
            Attributes=[
                {"Key": "deregistration_delay.timeout_seconds", "Value": str(int(inputs["deregistrationDelay"]))},
                {"Key": "preserve_client_ip.enabled", "Value": str(inputs["preserveClientIp"])},
            ],
        )
        return group["TargetGroupArn"], {"arn": group["TargetGroupArn"]}

    def _listener(self, name: str, inputs: dict):
        listener = self.aws.client("elbv2").create_listener(
            LoadBalancerArn=inputs["loadBalancerArn"],
            Protocol=inputs["protocol"],
            Port=int(inputs["port"]),
            DefaultActions=[
                {"Type": a["type"], "TargetGroupArn": a["targetGroupArn"]} for a in inputs["defaultActions"]
            ],
        )["Listeners"][0]
        return listener["ListenerArn"], {"arn": listener["ListenerArn"]}

    def _target(self, name: str, inputs: dict):
        scaling = self.aws.client("application-autoscaling")
        scaling.register_scalable_target(
            ServiceNamespace=inputs["serviceNamespace"],
            ResourceId=inputs["resourceId"],
            ScalableDimension=inputs["scalableDimension"],
            MinCapacity=int(inputs["minCapacity"]),
            MaxCapacity=int(inputs["maxCapacity"]),
        )
        found = scaling.describe_scalable_targets(
            ServiceNamespace=inputs["serviceNamespace"], ResourceIds=[inputs["resourceId"]]
        )["ScalableTargets"][0]
        arn = found.get("ScalableTargetARN") or (
            f"arn:aws:application-autoscaling:{self.region}:{ACCOUNT}:scalable-target/{name}"
        )
        return arn, {"arn": arn}

    def _policy(self, name: str, inputs: dict):
        tracking = inputs["targetTrackingScalingPolicyConfiguration"]
        self.aws.client("application-autoscaling").put_scaling_policy(
            PolicyName=name,
            ServiceNamespace=inputs["serviceNamespace"],
            ResourceId=inputs["resourceId"],
            ScalableDimension=inputs["scalableDimension"],
            PolicyType=inputs["policyType"],
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": float(tracking["targetValue"]),
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": tracking["predefinedMetricSpecification"]["predefinedMetricType"]
                },
                "ScaleInCooldown": int(tracking["scaleInCooldown"]),
                "ScaleOutCooldown": int(tracking["scaleOutCooldown"]),
            },
        )
        return name, {}


class Declared:
    """Lookups over what the program declared, by the names the program gave them."""

    def __init__(self, resources: list[Registered], outputs: dict, mocks: MotoMocks) -> None:
        self.resources, self.outputs, self.mocks = resources, outputs, mocks

    def of_type(self, type_: str) -> list[Registered]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, **inputs) -> Registered:
        found = [r for r in self.of_type(type_) if all(r.inputs.get(k) == v for k, v in inputs.items())]
        assert len(found) == 1, f"expected one {type_} with {inputs}, found {[r.name for r in found]}"
        return found[0]

    def function(self, name: str) -> Registered:
        return self.one("aws:lambda/function:Function", name=name)

    def function_by_arn(self, arn: str) -> Registered:
        return self.function(arn.rsplit(":", 1)[-1])

    def service(self) -> Registered:
        return self.one("aws:ecs/service:Service")

    def container_definitions(self) -> list[dict]:
        return json.loads(self.one("aws:ecs/taskDefinition:TaskDefinition").inputs["containerDefinitions"])


@dataclass
class Deployment:
    declared: Declared
    credentials: dict[str, dict]  # role ARN -> temporary credentials, for every actor's role


def trusts(role: Registered, service: str) -> bool:
    document = json.loads(role.inputs["assumeRolePolicy"])
    return any(
        s["Effect"] == "Allow" and s.get("Principal", {}).get("Service") == service and s["Action"] == "sts:AssumeRole"
        for s in document["Statement"]
    )


def deploy(aws: MotoAws, config: dict, certs: dict, image_digest: str = "sha256:" + "ab" * 32) -> Deployment:
    """Run the program into moto, take each actor's role, then make moto enforce IAM: from
    here on the harness signs as an all-powerful user of its own and each actor as its role.
    Call `enforce_iam(aws, False)` when done: the setting is moto's, for the whole process."""
    from pulumi_mocks import synthesize

    assert allow_fargate_task_memory(), "moto's RunTask is not the one tests/moto_stack.py was written against"
    mocks = MotoMocks(aws, image_digest)
    stack = synthesize(config, certs=certs, mocks=mocks, region=aws.region)
    declared = Declared(stack.resources, stack.outputs, mocks)
    iam, sts = aws.client("iam"), aws.client("sts")
    iam.create_user(UserName="harness")
    iam.put_user_policy(
        UserName="harness",
        PolicyName="all",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        ),
    )
    harness = iam.create_access_key(UserName="harness")["AccessKey"]
    roles = {r.state["arn"]: r for r in declared.of_type("aws:iam/role:Role")}
    actors = {f.inputs["role"]: "lambda.amazonaws.com" for f in declared.of_type("aws:lambda/function:Function")}
    actors[declared.one("aws:ecs/taskDefinition:TaskDefinition").inputs["executionRoleArn"]] = "ecs-tasks.amazonaws.com"
    for arn, service in actors.items():
        assert trusts(roles[arn], service), f"{roles[arn].name} does not trust {service}"
    credentials = {arn: sts.assume_role(RoleArn=arn, RoleSessionName="rehearsal")["Credentials"] for arn in actors}
    enforce_iam(aws, True)
    aws.use_credentials(harness["AccessKeyId"], harness["SecretAccessKey"])
    return Deployment(declared, credentials)


def enforce_iam(aws: MotoAws, on: bool) -> None:
    body = b"0" if on else b"inf"
    urllib.request.urlopen(
        urllib.request.Request(
            f"{aws.url}/moto-api/reset-auth", data=body, method="POST", headers={"Content-Type": "text/plain"}
        ),
        timeout=10,
    ).read()
