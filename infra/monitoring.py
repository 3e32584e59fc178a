"""What someone running Fluidity needs to notice trouble: alarms on the control plane's
Lambdas and API, sent to an SNS topic (with an optional e-mail subscription), and one
dashboard with the server's own metrics, the control plane's decisions and its errors."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from lambdas.metric_names import ACTIVE_CONNECTIONS, LAST_ACTIVITY

from .settings import StackSettings

PERIOD = 300  # seconds: alarms look at five-minute sums


@dataclass
class MonitoringArgs:
    settings: StackSettings
    region: pulumi.Input[str]
    function_names: dict  # role -> Output[str], the control plane's Lambdas
    log_groups: dict  # role -> Output[str], their log group names
    api_name: pulumi.Input[str]
    stage: str


def alarm_specs(s: StackSettings, roles: list[str]) -> list[dict]:
    """Every alarm, as plain data (metric, dimensions, threshold): errors and throttles of
    each Lambda, and API Gateway 5xx answers."""
    specs = []
    for role in roles:
        function = f"{s.service_name}-{role}"
        for metric in ("Errors", "Throttles"):
            specs.append(
                {
                    "name": f"{function}-{metric.lower()}",
                    "namespace": "AWS/Lambda",
                    "metric": metric,
                    "dimensions": {"FunctionName": function},
                    "description": f"the {role} Lambda had {metric.lower()} (see /aws/lambda/{function})",
                }
            )
    specs.append(
        {
            "name": f"{s.service_name}-control-5xx",
            "namespace": "AWS/ApiGateway",
            "metric": "5XXError",
            "dimensions": {"ApiName": f"{s.service_name}-control", "Stage": "prod"},
            "description": "the control plane's API answered 5xx (see its access logs)",
        }
    )
    return specs


def dashboard_body(s: StackSettings, region: str, roles: list[str], log_groups: list[str]) -> dict:
    server = ["ServiceName", s.service_name]
    api = ["ApiName", f"{s.service_name}-control", "Stage", "prod"]
    return {
        "widgets": [
            {
                "type": "metric",
                "x": 0,
                "y": 0,
                "width": 12,
                "height": 6,
                "properties": {
                    "title": "Agents connected",
                    "region": region,
                    "stat": "Maximum",
                    "period": 60,
                    "metrics": [[s.metrics_namespace, ACTIVE_CONNECTIONS, *server]],
                },
            },
            {
                "type": "metric",
                "x": 12,
                "y": 0,
                "width": 12,
                "height": 6,
                "properties": {
                    "title": "Minutes since last activity",
                    "region": region,
                    "period": 60,
                    "metrics": [
                        [{"expression": "(EPOCH(m1) - m1) / 60", "label": "idle minutes", "id": "idle"}],
                        [
                            s.metrics_namespace,
                            LAST_ACTIVITY,
                            *server,
                            {"id": "m1", "stat": "Maximum", "visible": False},
                        ],
                    ],
                },
            },
            {
                "type": "log",
                "x": 0,
                "y": 6,
                "width": 24,
                "height": 6,
                "properties": {
                    "title": "Wake, sleep and kill decisions",
                    "region": region,
                    "view": "table",
                    "query": "SOURCE "
                    + " | SOURCE ".join(f"'{g}'" for g in log_groups)
                    + " | fields @timestamp, @message | filter @message like /decision:/ | sort @timestamp desc | "
                    "limit 50",
                },
            },
            {
                "type": "metric",
                "x": 0,
                "y": 12,
                "width": 12,
                "height": 6,
                "properties": {
                    "title": "Control plane errors and throttles",
                    "region": region,
                    "stat": "Sum",
                    "period": PERIOD,
                    "metrics": [
                        ["AWS/Lambda", metric, "FunctionName", f"{s.service_name}-{role}"]
                        for role in roles
                        for metric in ("Errors", "Throttles")
                    ],
                },
            },
            {
                "type": "metric",
                "x": 12,
                "y": 12,
                "width": 12,
                "height": 6,
                "properties": {
                    "title": "Control plane API calls",
                    "region": region,
                    "stat": "Sum",
                    "period": PERIOD,
                    "metrics": [
                        ["AWS/ApiGateway", "Count", *api],
                        ["AWS/ApiGateway", "4XXError", *api],
                        ["AWS/ApiGateway", "5XXError", *api],
                    ],
                },
            },
        ]
    }


class Monitoring(pulumi.ComponentResource):
    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("fluidity:infra:Monitoring", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        roles = sorted(args.function_names)
        self.topic = aws.sns.Topic(f"{name}-alarms", name=f"{s.service_name}-alarms", opts=child)
        if s.alarm_email:
            aws.sns.TopicSubscription(
                f"{name}-alarm-email", topic=self.topic.arn, protocol="email", endpoint=s.alarm_email, opts=child
            )
        self.alarms = [
            aws.cloudwatch.MetricAlarm(
                f"{name}-{spec['name']}",
                name=spec["name"],
                alarm_description=f"Fluidity: {spec['description']}",
                namespace=spec["namespace"],
                metric_name=spec["metric"],
                dimensions=spec["dimensions"],
                statistic="Sum",
                period=PERIOD,
                evaluation_periods=1,
                threshold=1,
                comparison_operator="GreaterThanOrEqualToThreshold",
                treat_missing_data="notBreaching",
                alarm_actions=[self.topic.arn],
                ok_actions=[self.topic.arn],
                opts=child,
            )
            for spec in alarm_specs(s, roles)
        ]
        body = pulumi.Output.all(args.region, *(args.log_groups[role] for role in roles)).apply(
            lambda a: json.dumps(dashboard_body(s, a[0], roles, list(a[1:])))
        )
        self.dashboard = aws.cloudwatch.Dashboard(
            f"{name}-dashboard", dashboard_name=s.service_name, dashboard_body=body, opts=child
        )
        self.register_outputs({"alarmTopicArn": self.topic.arn, "dashboardName": self.dashboard.dashboard_name})
