"""The control plane: the four Lambdas from `lambdas/`, their roles and log groups, a REST
API (POST /wake, GET /status, POST /kill) behind an API key and a throttled usage plan,
its access logs, and the EventBridge Scheduler schedules that run sleep, kill and an
optional wake in the stack's time zone."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pulumi
import pulumi_aws as aws

from deployment.stack_settings import StackSettings

from . import policies

LAMBDAS = Path(__file__).resolve().parent.parent / "lambdas"
CODE_FOLDERS = (LAMBDAS, LAMBDAS.parent / "deployment")  # what the Lambdas import: boto3 and these
RUNTIME = "python3.12"
APIGATEWAY_LOGS_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
ROUTES = (("wake", "POST"), ("status", "GET"), ("kill", "POST"))
STAGE = "prod"
KILL_EVENT = {
    "httpMethod": "POST",
    "path": "/kill",
    "headers": {},
    "body": None,
    "requestContext": {"stage": "schedule"},
}
WAKE_EVENT = {
    "httpMethod": "POST",
    "path": "/wake",
    "headers": {},
    "body": None,
    "requestContext": {"stage": "schedule"},
}
ACCESS_LOG_FORMAT = json.dumps(
    {
        "requestId": "$context.requestId",
        "ip": "$context.identity.sourceIp",
        "time": "$context.requestTime",
        "method": "$context.httpMethod",
        "path": "$context.resourcePath",
        "status": "$context.status",
        "latencyMs": "$context.responseLatency",
        "error": "$context.error.message",
    }
)


@dataclass
class ControlPlaneArgs:
    settings: StackSettings
    cluster_arn: pulumi.Input[str]
    service_arn: pulumi.Input[str]
    region: pulumi.Input[str]
    account_id: pulumi.Input[str]
    security_group_id: pulumi.Input[str] = ""  # where agents come in, opened to wakers when the stack names no CIDR
    endpoint: pulumi.Input[str] = ""  # stableEndpoint nlb: the load balancer's DNS name, reported to agents
    scaling_target_arn: pulumi.Input[str] = ""  # maxTasks > 1: the bounds the control plane moves


def code_archive() -> pulumi.AssetArchive:
    """Only the `lambdas/` folder and the `deployment/` one it imports (their .py files), kept
    under those names: handler `lambdas.wake.handler`."""
    files = sorted(p for folder in CODE_FOLDERS for p in folder.glob("*.py"))
    return pulumi.AssetArchive({f"{p.parent.name}/{p.name}": pulumi.FileAsset(str(p)) for p in files})


def function_environment(s: StackSettings, security_group_id: str = "", endpoint: str = "") -> dict[str, str]:
    ingress = {"INGRESS_GROUP_ID": security_group_id} if s.ingress_for_wakers and security_group_id else {}
    stable = {"STABLE_ENDPOINT": endpoint} if endpoint else {}
    scaling = {"MAX_TASKS": str(s.max_tasks)} if s.scales else {}
    spot = {"CAPACITY": s.capacity} if s.capacity == "FARGATE_SPOT" else {}
    return (
        ingress
        | stable
        | scaling
        | budget_environment(s)
        | spot
        | {
            "CLUSTER_NAME": s.cluster_name,
            "SERVICE_NAME": s.service_name,
            "CONTAINER_PORT": str(s.container_port),
            "METRICS_NAMESPACE": s.metrics_namespace,
            "IDLE_THRESHOLD_MINUTES": str(s.idle_threshold_minutes),
            "LOOKBACK_MINUTES": str(s.lookback_minutes),
        }
    )


def budget_environment(s: StackSettings) -> dict[str, str]:
    """monthlyBudget and the prices the Lambdas weigh the month with (`deployment/budget.py`),
    from the same model as `fluidity cost`."""
    if s.monthly_budget is None:
        return {}
    from tunnel.ops.costs import budget_prices

    prices = budget_prices(s)
    return {
        "MONTHLY_BUDGET": f"{s.monthly_budget:g}",
        "BUDGET_TASK_HOUR": f"{prices['task_hour']:.6f}",
        "BUDGET_GB_SENT": f"{prices['gb_sent']:.6f}",
        "BUDGET_FIXED": f"{prices['fixed']:.6f}",
    }


class ControlPlane(pulumi.ComponentResource):
    def __init__(self, name: str, args: ControlPlaneArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("fluidity:infra:ControlPlane", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        archive = code_archive()
        task_arns = pulumi.Output.all(args.region, args.account_id).apply(
            lambda a: f"arn:aws:ecs:{a[0]}:{a[1]}:task/{s.cluster_name}/*"
        )

        self.functions: dict[str, aws.lambda_.Function] = {}
        roles: dict[str, aws.iam.Role] = {}
        self.log_groups: dict[str, pulumi.Output] = {}
        for role in ("wake", "status", "kill", "sleep"):
            function_name = f"{s.service_name}-{role}"
            logs = aws.cloudwatch.LogGroup(
                f"{name}-{role}-logs",
                name=f"/aws/lambda/{function_name}",
                retention_in_days=s.log_retention_days,
                opts=child,
            )
            self.log_groups[role] = logs.name
            iam_role = aws.iam.Role(
                f"{name}-{role}-role",
                assume_role_policy=json.dumps(policies.assume_role("lambda.amazonaws.com")),
                opts=child,
            )
            group_arn = pulumi.Output.all(args.region, args.account_id, args.security_group_id).apply(
                lambda a: f"arn:aws:ec2:{a[0]}:{a[1]}:security-group/{a[2]}" if s.ingress_for_wakers and a[2] else None
            )
            policy = pulumi.Output.all(
                args.service_arn, args.cluster_arn, task_arns, logs.arn, group_arn, args.scaling_target_arn
            ).apply(partial(_policy_document, role, s.monthly_budget is not None))
            aws.iam.RolePolicy(f"{name}-{role}-policy", role=iam_role.id, policy=policy, opts=child)
            roles[role] = iam_role
            self.functions[role] = aws.lambda_.Function(
                f"{name}-{role}",
                name=function_name,
                runtime=RUNTIME,
                handler=f"lambdas.{role}.handler",
                role=iam_role.arn,
                code=archive,
                timeout=30,
                memory_size=128,
                environment=aws.lambda_.FunctionEnvironmentArgs(
                    variables=pulumi.Output.all(args.security_group_id, args.endpoint).apply(
                        lambda a: function_environment(s, a[0], a[1])
                    )
                ),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[logs]),
            )

        self.api = aws.apigateway.RestApi(
            f"{name}-api", name=f"{s.service_name}-control", description="Fluidity wake / status / kill", opts=child
        )
        methods, integrations = [], []
        for route, verb in ROUTES:
            resource = aws.apigateway.Resource(
                f"{name}-{route}-resource",
                rest_api=self.api.id,
                parent_id=self.api.root_resource_id,
                path_part=route,
                opts=child,
            )
            method = aws.apigateway.Method(
                f"{name}-{route}-method",
                rest_api=self.api.id,
                resource_id=resource.id,
                http_method=verb,
                authorization="NONE",
                api_key_required=True,
                opts=child,
            )
            integration = aws.apigateway.Integration(
                f"{name}-{route}-integration",
                rest_api=self.api.id,
                resource_id=resource.id,
                http_method=method.http_method,
                type="AWS_PROXY",
                integration_http_method="POST",
                uri=self.functions[route].invoke_arn,
                opts=child,
            )
            aws.lambda_.Permission(
                f"{name}-{route}-invoke",
                action="lambda:InvokeFunction",
                function=self.functions[route].name,
                principal="apigateway.amazonaws.com",
                source_arn=self.api.execution_arn.apply(partial(_invoke_arn, verb=verb, route=route)),
                opts=child,
            )
            methods.append(method)
            integrations.append(integration)

        deployment = aws.apigateway.Deployment(
            f"{name}-deployment",
            rest_api=self.api.id,
            triggers={"routes": json.dumps(ROUTES)},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*methods, *integrations]),
        )
        # Access logs in a group of their own (API Gateway writes them with the account's
        # CloudWatch role, which aws.apigateway.Account sets: one per account and region).
        self.access_logs = aws.cloudwatch.LogGroup(
            f"{name}-access-logs",
            name=f"/aws/apigateway/{s.service_name}-control",
            retention_in_days=s.log_retention_days,
            opts=child,
        )
        push_role = aws.iam.Role(
            f"{name}-apigateway-logs-role",
            assume_role_policy=json.dumps(policies.assume_role("apigateway.amazonaws.com")),
            opts=child,
        )
        aws.iam.RolePolicyAttachment(
            f"{name}-apigateway-logs", role=push_role.name, policy_arn=APIGATEWAY_LOGS_POLICY, opts=child
        )
        account = aws.apigateway.Account(f"{name}-apigateway-account", cloudwatch_role_arn=push_role.arn, opts=child)
        self.stage = aws.apigateway.Stage(
            f"{name}-stage",
            rest_api=self.api.id,
            deployment=deployment.id,
            stage_name=STAGE,
            access_log_settings=aws.apigateway.StageAccessLogSettingsArgs(
                destination_arn=self.access_logs.arn, format=ACCESS_LOG_FORMAT
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account]),
        )
        self.api_key = aws.apigateway.ApiKey(f"{name}-key", name=f"{s.service_name}-agent", enabled=True, opts=child)
        plan = aws.apigateway.UsagePlan(
            f"{name}-plan",
            name=f"{s.service_name}-plan",
            api_stages=[aws.apigateway.UsagePlanApiStageArgs(api_id=self.api.id, stage=self.stage.stage_name)],
            throttle_settings=aws.apigateway.UsagePlanThrottleSettingsArgs(
                burst_limit=s.api_burst_limit, rate_limit=s.api_rate_limit
            ),
            quota_settings=aws.apigateway.UsagePlanQuotaSettingsArgs(limit=s.api_monthly_quota, period="MONTH"),
            opts=child,
        )
        aws.apigateway.UsagePlanKey(
            f"{name}-plan-key", key_id=self.api_key.id, key_type="API_KEY", usage_plan_id=plan.id, opts=child
        )

        # EventBridge Scheduler: the same expressions, in the stack's own time zone. The
        # scheduled wake goes through the wake handler like an agent's (without a source
        # address, so it opens the port to nobody); sleep then stops an idle server as usual.
        scheduler_role = aws.iam.Role(
            f"{name}-scheduler-role",
            assume_role_policy=json.dumps(policies.assume_role("scheduler.amazonaws.com")),
            opts=child,
        )
        scheduled = [
            ("sleep", s.sleep_schedule, {"source": "fluidity.schedule"}),
            ("kill", s.kill_schedule, KILL_EVENT),
        ]
        if s.wake_schedule:
            scheduled.append(("wake", s.wake_schedule, WAKE_EVENT))
        aws.iam.RolePolicy(
            f"{name}-scheduler-policy",
            role=scheduler_role.id,
            policy=pulumi.Output.all(*(self.functions[role].arn for role, _, _ in scheduled)).apply(
                lambda arns: json.dumps(policies.invoke_functions(list(arns)))
            ),
            opts=child,
        )
        self.schedules = {}
        for role, expression, event in scheduled:
            self.schedules[role] = aws.scheduler.Schedule(
                f"{name}-{role}-schedule",
                name=f"{s.service_name}-{role}",
                description=f"Fluidity {role}",
                schedule_expression=expression,
                schedule_expression_timezone=s.schedule_timezone,
                flexible_time_window=aws.scheduler.ScheduleFlexibleTimeWindowArgs(mode="OFF"),
                target=aws.scheduler.ScheduleTargetArgs(
                    arn=self.functions[role].arn, role_arn=scheduler_role.arn, input=json.dumps(event)
                ),
                opts=child,
            )
        self.roles = roles

        self.url = pulumi.Output.all(self.api.id, args.region, self.stage.stage_name).apply(
            lambda a: f"https://{a[0]}.execute-api.{a[1]}.amazonaws.com/{a[2]}"
        )
        self.register_outputs({"apiUrl": self.url})


def _policy_document(role: str, budget: bool, arns: list) -> str:
    """A control function's IAM policy, once the ARNs it names are known."""
    service_arn, cluster_arn, task_arns, log_group_arn, security_group_arn, scaling_target_arn = arns
    return json.dumps(
        policies.control_function(
            role,
            service_arn=service_arn,
            cluster_arn=cluster_arn,
            task_arns=task_arns,
            log_group_arn=log_group_arn,
            security_group_arn=security_group_arn,
            scaling_target_arn=scaling_target_arn or None,
            budget=budget,
        )
    )


def _invoke_arn(execution_arn: str, verb: str, route: str) -> str:
    """The API's permission to invoke one route's function."""
    return f"{execution_arn}/*/{verb}/{route}"
