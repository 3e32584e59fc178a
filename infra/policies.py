"""IAM policy documents, as plain functions of ARNs so they can be read and tested.

Least privilege: each role can touch only this stack's cluster, service, log groups and
parameters; the read-only calls that AWS does not scope by resource (ENI lookups,
metric statistics) are the only `*` resources.
"""

from __future__ import annotations

from deployment.stack_settings import ECR_KEEP_IMAGES


def assume_role(service: str) -> dict:
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
    }


def read_parameters(parameter_arns: list[str]) -> dict:
    """The task execution role reads exactly the server's certificate parameters."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ServerCertificates",
                "Effect": "Allow",
                "Action": ["ssm:GetParameters"],
                "Resource": sorted(parameter_arns),
            }
        ],
    }


def control_function(
    role: str,
    *,
    service_arn: str,
    cluster_arn: str,
    task_arns: str,
    log_group_arn: str,
    security_group_arn: str | None = None,
    scaling_target_arn: str | None = None,
    budget: bool = False,
) -> dict:
    """What one control-plane Lambda (`wake`, `status`, `kill` or `sleep`) may do."""
    changes = role in ("wake", "kill", "sleep")
    service_actions = (
        ["ecs:DescribeServices", "ecs:ListTagsForResource"]
        + (["ecs:UpdateService"] if changes else [])
        + (["ecs:TagResource"] if role == "wake" else [])
    )
    statements = [
        {
            "Sid": "OwnLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": [log_group_arn, f"{log_group_arn}:*"],
        },
        {"Sid": "ThisService", "Effect": "Allow", "Action": service_actions, "Resource": service_arn},
        {
            "Sid": "ThisClustersTasks",
            "Effect": "Allow",
            "Action": ["ecs:ListTasks"],
            "Resource": "*",
            "Condition": {"ArnEquals": {"ecs:cluster": cluster_arn}},
        },
        {"Sid": "DescribeThisClustersTasks", "Effect": "Allow", "Action": ["ecs:DescribeTasks"], "Resource": task_arns},
        # Whether the task definition declares a health check (not scoped by resource in IAM).
        {"Sid": "ReadTaskDefinitions", "Effect": "Allow", "Action": ["ecs:DescribeTaskDefinition"], "Resource": "*"},
    ]
    if security_group_arn and changes:
        # Open the server's port to wakers (wake) and close it again (every role that stops it).
        actions = ["ec2:RevokeSecurityGroupIngress"] + (
            ["ec2:AuthorizeSecurityGroupIngress", "ec2:UpdateSecurityGroupRuleDescriptionsIngress"]
            if role == "wake"
            else []
        )
        statements.append(
            {"Sid": "ServerPortForWakers", "Effect": "Allow", "Action": actions, "Resource": security_group_arn}
        )
        statements.append(
            {"Sid": "ReadSecurityGroups", "Effect": "Allow", "Action": ["ec2:DescribeSecurityGroups"], "Resource": "*"}
        )
    if scaling_target_arn and changes:
        # maxTasks > 1: the lower bound is 1 while the server runs, 0 to stop it.
        statements.append(
            {
                "Sid": "ScalingBounds",
                "Effect": "Allow",
                "Action": ["application-autoscaling:RegisterScalableTarget"],
                "Resource": scaling_target_arn,
            }
        )
    if role == "sleep" or (role == "wake" and budget):  # idle time; the month so far against the budget
        statements.append(
            {"Sid": "ReadMetrics", "Effect": "Allow", "Action": ["cloudwatch:GetMetricStatistics"], "Resource": "*"}
        )
    if role != "sleep":
        statements.append(
            {"Sid": "FindPublicIp", "Effect": "Allow", "Action": ["ec2:DescribeNetworkInterfaces"], "Resource": "*"}
        )
    return {"Version": "2012-10-17", "Statement": statements}


def invoke_functions(function_arns: list[str]) -> dict:
    """EventBridge Scheduler's role: invoke exactly the scheduled functions."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "RunSchedules",
                "Effect": "Allow",
                "Action": ["lambda:InvokeFunction"],
                "Resource": sorted(function_arns),
            }
        ],
    }


def ecr_lifecycle(keep: int = ECR_KEEP_IMAGES) -> dict:
    return {
        "rules": [
            {
                "rulePriority": 1,
                "description": f"keep the {keep} newest images",
                "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": keep},
                "action": {"type": "expire"},
            }
        ]
    }
