"""What someone running Fluidity needs to notice trouble, at a price a stopped stack can
carry: one alarm on the control plane's errors, sent to an SNS topic (with an optional
e-mail subscription), and a dashboard only when asked for (`dashboard: true`, $3.00 a
month at list price).

The alarm is billed per metric it reads ($0.10 each), so it reads two, not nine: every
error line the four Lambdas log and every 5xx in the API's access log become one custom
metric through free metric filters (it has data, and so costs, only in the hours it has
errors), and the sleep Lambda's throttles, the one failure that logs nothing and would
leave a server running."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from deployment.alarm_specs import PERIOD, alarm_metrics, error_filters
from deployment.metric_names import ACTIVE_CONNECTIONS, CONTROL_PLANE_ERRORS, LAST_ACTIVITY
from deployment.stack_settings import StackSettings


@dataclass
class MonitoringArgs:
    settings: StackSettings
    region: pulumi.Input[str]
    function_names: dict  # role -> Output[str], the control plane's Lambdas
    log_groups: dict  # role -> Output[str], their log group names
    api_name: pulumi.Input[str]
    stage: str
    access_log_group: pulumi.Input[str] = ""  # the API's access logs, where 5xx answers show


def alarm_queries(s: StackSettings) -> list[aws.cloudwatch.MetricAlarmMetricQueryArgs]:
    """One expression over `alarm_metrics`: the alarm fires when their sum reaches 1."""
    metrics = alarm_metrics(s)
    return [
        aws.cloudwatch.MetricAlarmMetricQueryArgs(
            id="total",
            expression=" + ".join(f"FILL({m['id']}, 0)" for m in metrics),
            label="control plane errors and sleep throttles",
            return_data=True,
        ),
        *(
            aws.cloudwatch.MetricAlarmMetricQueryArgs(
                id=m["id"],
                return_data=False,
                metric=aws.cloudwatch.MetricAlarmMetricQueryMetricArgs(
                    namespace=m["namespace"],
                    metric_name=m["metric"],
                    dimensions=m["dimensions"] or None,
                    period=PERIOD,
                    stat="Sum",
                ),
            )
            for m in metrics
        ),
    ]


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
        groups = {**args.log_groups, "access": args.access_log_group}
        self.filters = [
            aws.cloudwatch.LogMetricFilter(
                f"{name}-{spec['source']}-errors",
                name=f"{s.service_name}-{spec['source']}-errors",
                log_group_name=groups[spec["source"]],
                pattern=spec["pattern"],
                metric_transformation=aws.cloudwatch.LogMetricFilterMetricTransformationArgs(
                    namespace=s.metrics_namespace,
                    name=CONTROL_PLANE_ERRORS,
                    value="1",
                    unit="Count",
                ),
                opts=child,
            )
            for spec in error_filters(s, roles)
        ]
        self.alarm = aws.cloudwatch.MetricAlarm(
            f"{name}-errors",
            name=f"{s.service_name}-control-plane-errors",
            alarm_description=(
                f"Fluidity: the control plane logged errors, its API answered 5xx or sleep was throttled (see "
                f"/aws/lambda/{s.service_name}-* and /aws/apigateway/{s.service_name}-control)"
            ),
            metric_queries=alarm_queries(s),
            evaluation_periods=1,
            threshold=1,
            comparison_operator="GreaterThanOrEqualToThreshold",
            treat_missing_data="notBreaching",
            alarm_actions=[self.topic.arn],
            ok_actions=[self.topic.arn],
            opts=child,
        )
        outputs: dict = {"alarmTopicArn": self.topic.arn}
        self.dashboard = None
        if s.dashboard:
            body = pulumi.Output.all(args.region, *(args.log_groups[role] for role in roles)).apply(
                lambda a: json.dumps(dashboard_body(s, a[0], roles, list(a[1:])))
            )
            self.dashboard = aws.cloudwatch.Dashboard(
                f"{name}-dashboard", dashboard_name=s.service_name, dashboard_body=body, opts=child
            )
            outputs["dashboardName"] = self.dashboard.dashboard_name
        self.register_outputs(outputs)
