"""The whole stack, as a function: `__main__.py` calls it, the tests call it under mocks."""

from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_aws as aws

from deployment.stack_settings import SettingsError, from_config

from .control_plane import STAGE, ControlPlane, ControlPlaneArgs
from .monitoring import Monitoring, MonitoringArgs
from .service import CERT_SECRETS, FluidityService, FluidityServiceArgs

CERT_HELP = "pulumi config set --secret {key} < {path}"
CERT_PATHS = {"serverCert": "certs/server.pem", "serverKey": "certs/server.key", "caCert": "certs/ca.pem"}


def public_ip_command(settings, region: str) -> str:
    """The seed's GetPublicIPCommand: the running task's public IP with the AWS CLI alone."""
    aws_cli = f"aws --region {region}"
    return (
        f"{aws_cli} ecs list-tasks --cluster {settings.cluster_name} --service-name {settings.service_name} "
        f"--desired-status RUNNING --query 'taskArns[0]' --output text"
        f" | xargs -I{{}} {aws_cli} ecs describe-tasks --cluster {settings.cluster_name} --tasks {{}}"
        " --query \"tasks[0].attachments[0].details[?name=='networkInterfaceId'].value\" --output text"
        f" | xargs -I{{}} {aws_cli} ec2 describe-network-interfaces --network-interface-ids {{}} --query "
        f"'NetworkInterfaces[0].Association.PublicIp' --output text"
    )


def run() -> dict:
    config = pulumi.Config("fluidity")
    try:
        settings = from_config(config)
    except SettingsError as e:
        raise pulumi.RunError(str(e)) from None
    for warning in settings.warnings:
        pulumi.log.warn(warning)
    certificates = _certificates(config)
    region = aws.get_region().region
    vpc_id, subnets = _vpc_and_subnets(settings)
    repository = str(Path(__file__).resolve().parent.parent)  # the Dockerfile's context
    service = FluidityService(
        "fluidity",
        FluidityServiceArgs(
            settings=settings,
            vpc_id=vpc_id,
            subnet_ids=subnets,
            region=region,
            certificates=certificates,
            build_context=repository,
        ),
    )
    outputs = _service_outputs(service, settings, region)
    if settings.control_plane:
        outputs.update(_control_plane(service, settings, region))
    for name, output in outputs.items():
        pulumi.export(name, output)
    return outputs


def _certificates(config) -> dict:
    """The server's certificate, key and CA from the stack's secrets, each one required."""
    certificates = {}
    for key, _, _ in CERT_SECRETS:
        value = config.get_secret(key)
        if value is None:
            raise pulumi.RunError(
                f"fluidity:{key} is not set: {CERT_HELP.format(key=key, path=CERT_PATHS[key])} (make them with "
                f"`fluidity certs init`)"
            )
        certificates[key] = value
    return certificates


def _vpc_and_subnets(settings) -> tuple[str, list[str]]:
    """The configured VPC and subnets, or the default VPC and its default subnets."""
    subnets: list[str] | None
    if settings.vpc_id:
        vpc_id, subnets = settings.vpc_id, settings.public_subnets
    else:
        vpc_id = aws.ec2.get_vpc(default=True).id
        subnets = settings.public_subnets or list(
            aws.ec2.get_subnets(
                filters=[
                    aws.ec2.GetSubnetsFilterArgs(name="vpc-id", values=[vpc_id]),
                    aws.ec2.GetSubnetsFilterArgs(name="default-for-az", values=["true"]),
                ]
            ).ids
        )
    if not subnets:
        raise pulumi.RunError(f"no public subnets found in {vpc_id}: set fluidity:publicSubnets")
    return vpc_id, subnets


def _service_outputs(service: FluidityService, settings, region: str) -> dict[str, object]:
    outputs: dict[str, object] = {
        "clusterName": service.cluster.name,
        "serviceName": service.service.name,
        "repositoryUrl": service.repository.repository_url,
        "image": service.image_ref,
        "logGroupName": service.log_group.name,
        "securityGroupId": service.security_group.id,
        "clusterArn": service.cluster.arn,
        "taskDefinitionArn": service.task_definition.arn,
        "executionRoleArn": service.execution_role.arn,
        "taskRoleArn": service.task_role.arn,
        "publicIpCommand": public_ip_command(settings, region),
    }
    if service.load_balancer is not None:  # agents dial this name, whichever task answers
        outputs.update(endpoint=service.load_balancer.dns_name, loadBalancerArn=service.load_balancer.arn)
    return outputs


def _control_plane(service: FluidityService, settings, region: str) -> dict[str, object]:
    """The control plane (and its monitoring when asked) for the service; their outputs."""
    account = aws.get_caller_identity().account_id
    plane = ControlPlane(
        "fluidity-control",
        ControlPlaneArgs(
            settings=settings,
            cluster_arn=service.cluster.arn,
            service_arn=service.service.id,
            region=region,
            account_id=account,
            security_group_id=service.ingress_group.id,
            endpoint=service.load_balancer.dns_name if service.load_balancer is not None else "",
            scaling_target_arn=service.scaling_target.arn if service.scaling_target is not None else "",
        ),
    )
    outputs: dict[str, object] = {}
    if settings.monitoring:
        monitoring = Monitoring(
            "fluidity-monitoring",
            MonitoringArgs(
                settings=settings,
                region=region,
                function_names={role: f.name for role, f in plane.functions.items()},
                log_groups=plane.log_groups,
                api_name=plane.api.name,
                stage=STAGE,
                access_log_group=plane.access_logs.name,
            ),
        )
        outputs.update(alarmTopicArn=monitoring.topic.arn)
        if monitoring.dashboard is not None:
            outputs.update(dashboardName=monitoring.dashboard.dashboard_name)
    api_key: pulumi.Output[str] = pulumi.Output.secret(plane.api_key.value)
    outputs.update(
        **{f"{role}RoleArn": r.arn for role, r in plane.roles.items()},
        apiUrl=plane.url,
        apiKey=api_key,
        wakeUrl=plane.url.apply(lambda u: f"{u}/wake"),
        statusUrl=plane.url.apply(lambda u: f"{u}/status"),
        killUrl=plane.url.apply(lambda u: f"{u}/kill"),
    )
    return outputs
