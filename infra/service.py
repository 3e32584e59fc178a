"""The server side: ECR, ECS cluster + task definition + service, logs, IAM, security
group, and the server's certificates as SSM SecureString parameters."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

from deployment.ecs_state import OWNER_TAG, PULUMI_OWNS
from deployment.ingress import INGRESS_TAG
from deployment.stack_settings import StackSettings

from . import policies

EXECUTION_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
HEALTH_CHECK_COMMAND = ["CMD", "python3", "-m", "tunnel.server.healthcheck"]
DRAIN_SECONDS = 20  # the server's drain_timeout in the task (--drain-timeout), and the target group's delay
SCALE_AT_CPU_PERCENT = 60.0  # maxTasks > 1: the average CPU Application Auto Scaling keeps the tasks near
CERT_SECRETS = (
    ("serverCert", "server-cert", "FLUIDITY_SERVER_CERT"),
    ("serverKey", "server-key", "FLUIDITY_SERVER_KEY"),
    ("caCert", "ca-cert", "FLUIDITY_CA_CERT"),
)


# cpuArchitecture -> the image's platform
PLATFORMS = {"X86_64": docker_build.Platform.LINUX_AMD64, "ARM64": docker_build.Platform.LINUX_ARM64}
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass
class FluidityServiceArgs:
    settings: StackSettings
    vpc_id: pulumi.Input[str]
    subnet_ids: pulumi.Input[list]
    region: pulumi.Input[str]
    certificates: dict  # serverCert / serverKey / caCert -> secret Output[str]
    build_context: str = "."  # the repository: its Dockerfile builds the server image


def _server_port(s: StackSettings, description: str, **source: Any) -> aws.ec2.SecurityGroupIngressArgs:
    """An inbound rule for the server's port from `source` (addresses or a security group)."""
    return aws.ec2.SecurityGroupIngressArgs(
        protocol="tcp", from_port=s.container_port, to_port=s.container_port, description=description, **source
    )


def balancer_name(service_name: str) -> str:
    """A load balancer's or target group's name: at most 32 letters, digits and hyphens,
    no hyphen at either end (a service name may also hold underscores)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", service_name)[:32].strip("-") or "fluidity"


def pinned_image(repository_url: str, digest: str | None) -> str:
    """`repository@sha256:...`: a new image is a new task definition revision, and ECS
    runs exactly what was built (a tag is resolved once per deployment)."""
    if not digest or not _DIGEST.match(digest):
        raise pulumi.RunError(
            f"the server image was pushed to {repository_url} but its digest cannot be read ({digest!r}); see the "
            f"build output above"
        )
    return f"{repository_url}@{digest}"


def container_definitions(settings: StackSettings, image: str, region: str, secrets: dict[str, str]) -> list[dict]:
    """The one container, `server`; `secrets` maps environment names to parameter ARNs."""
    return [
        {
            "name": "server",
            "image": image,
            "essential": True,
            "portMappings": [
                {"containerPort": settings.container_port, "hostPort": settings.container_port, "protocol": "tcp"}
            ],
            # Appended to the image's ENTRYPOINT (twistd -n fluidity-server --config ...).
            "command": [
                "--port",
                str(settings.container_port),
                "--metrics-emit-metrics",
                "true",
                # Embedded metric format on stdout: the awslogs driver carries it to CloudWatch
                # Logs, which makes the metrics; no PutMetricData calls, no AWS SDK in the image.
                "--metrics-transport",
                "emf",
                "--metrics-namespace",
                settings.metrics_namespace,
                "--metrics-service-name",
                settings.service_name,
                "--drain-timeout",
                f"{DRAIN_SECONDS}s",
            ],
            "environment": [
                {"name": "FLUIDITY_LOG_LEVEL", "value": settings.log_level},
                {"name": "FLUIDITY_PORT", "value": str(settings.container_port)},
            ],
            "secrets": [{"name": name, "valueFrom": arn} for name, arn in sorted(secrets.items())],
            # ECS ignores the image's HEALTHCHECK: the same TLS handshake check, declared here.
            # Every 5 s (the shortest ECS allows: a wake is reported ready soon after the
            # listener is), with a start period for a cold start on a quarter of a vCPU.
            "healthCheck": {
                "command": HEALTH_CHECK_COMMAND,
                "interval": 5,
                "timeout": 4,
                "retries": 3,
                "startPeriod": 60,
            },
            "stopTimeout": 30,
            "logConfiguration": {
                "logDriver": "awslogs",
                "options": {
                    "awslogs-group": settings.log_group_name,
                    "awslogs-region": region,
                    "awslogs-stream-prefix": "ecs",
                },
            },
        }
    ]


class FluidityService(pulumi.ComponentResource):
    def __init__(self, name: str, args: FluidityServiceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("fluidity:infra:Service", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)

        self.repository = aws.ecr.Repository(
            f"{name}-repo",
            name=s.service_name,
            image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(scan_on_push=True),
            image_tag_mutability="MUTABLE",
            force_delete=True,
            opts=child,
        )
        aws.ecr.LifecyclePolicy(
            f"{name}-repo-lifecycle",
            repository=self.repository.name,
            policy=json.dumps(policies.ecr_lifecycle()),
            opts=child,
        )

        self.cluster = aws.ecs.Cluster(f"{name}-cluster", name=s.cluster_name, opts=child)
        capacity = self._capacity(name, s, child)

        self.log_group = aws.cloudwatch.LogGroup(
            f"{name}-logs", name=s.log_group_name, retention_in_days=s.log_retention_days, opts=child
        )

        self.parameters = {
            key: aws.ssm.Parameter(
                f"{name}-{suffix}",
                name=f"/{s.cluster_name}/{s.service_name}/{suffix}",
                type="SecureString",
                value=args.certificates[key],
                description=f"Fluidity {suffix} (PEM), injected into the server as {env}",
                opts=child,
            )
            for key, suffix, env in CERT_SECRETS
        }

        self.execution_role = aws.iam.Role(
            f"{name}-execution-role",
            assume_role_policy=json.dumps(policies.assume_role("ecs-tasks.amazonaws.com")),
            opts=child,
        )
        aws.iam.RolePolicyAttachment(
            f"{name}-execution-managed", role=self.execution_role.name, policy_arn=EXECUTION_POLICY, opts=child
        )
        aws.iam.RolePolicy(
            f"{name}-execution-parameters",
            role=self.execution_role.id,
            policy=pulumi.Output.all(*(p.arn for p in self.parameters.values())).apply(
                lambda arns: json.dumps(policies.read_parameters(list(arns)))
            ),
            opts=child,
        )
        # The server itself calls no AWS API (its metrics are EMF log lines): a role with no
        # permissions, kept so the task has an identity of its own and nothing more.
        self.task_role = aws.iam.Role(
            f"{name}-task-role",
            assume_role_policy=json.dumps(policies.assume_role("ecs-tasks.amazonaws.com")),
            opts=child,
        )

        self._entry_groups(name, s, args.vpc_id, child)

        if s.container_image:
            image = pulumi.Output.from_input(s.container_image)
        else:
            image = self._build_image(name, s, args.build_context, child)
        self.image_ref = image
        secrets = pulumi.Output.all(**{env: self.parameters[key].arn for key, _, env in CERT_SECRETS})
        definitions = pulumi.Output.all(image, args.region, secrets).apply(
            lambda a: json.dumps(container_definitions(s, a[0], a[1], a[2]))
        )
        self.task_definition = aws.ecs.TaskDefinition(
            f"{name}-task",
            family=s.service_name,
            cpu=str(s.cpu),
            memory=str(s.memory),
            network_mode="awsvpc",
            requires_compatibilities=["FARGATE"],
            execution_role_arn=self.execution_role.arn,
            task_role_arn=self.task_role.arn,
            runtime_platform=aws.ecs.TaskDefinitionRuntimePlatformArgs(
                operating_system_family="LINUX", cpu_architecture=s.cpu_architecture
            ),
            container_definitions=definitions,
            opts=child,
        )

        self.service = self._ecs_service(name, s, args, child, capacity)
        self.scaling_target: aws.appautoscaling.Target | None = None
        if s.scales:
            self._scale(name, s, child)
        self.register_outputs(
            {
                "image": image,
                "clusterName": self.cluster.name,
                "serviceName": self.service.name,
                "repositoryUrl": self.repository.repository_url,
                "logGroupName": self.log_group.name,
                "securityGroupId": self.security_group.id,
            }
        )

    def _capacity(self, name: str, s: StackSettings, child: pulumi.ResourceOptions):
        """Spot as the cluster's default capacity (FARGATE_SPOT), or None for on-demand."""
        if s.capacity != "FARGATE_SPOT":
            return None
        return aws.ecs.ClusterCapacityProviders(
            f"{name}-capacity",
            cluster_name=self.cluster.name,
            capacity_providers=["FARGATE", "FARGATE_SPOT"],
            default_capacity_provider_strategies=[
                aws.ecs.ClusterCapacityProvidersDefaultCapacityProviderStrategyArgs(
                    capacity_provider="FARGATE_SPOT", weight=1
                )
            ],
            opts=child,
        )

    def _entry_groups(self, name: str, s: StackSettings, vpc_id, child: pulumi.ResourceOptions) -> None:
        """Where agents come in: the task itself, or (stableEndpoint nlb) the load balancer,
        whose group then takes the agents' rules and the task's takes only its traffic."""
        self.load_balancer: aws.lb.LoadBalancer | None = None
        self.target_group: aws.lb.TargetGroup | None = None
        if s.behind_nlb:
            self.ingress_group = self._agents_group(f"{name}-lb-sg", "the load balancer", s, vpc_id)
            self.security_group = self._group(
                f"{name}-sg",
                vpc_id,
                child,
                description=f"Fluidity server: {s.container_port}/tcp from its load balancer",
                ingress=[
                    _server_port(
                        s,
                        "agents and health checks, through the load balancer",
                        security_groups=[self.ingress_group.id],
                    )
                ],
            )
        else:
            self.security_group = self.ingress_group = self._agents_group(f"{name}-sg", "the server", s, vpc_id)

    def _ecs_service(
        self, name: str, s: StackSettings, args: FluidityServiceArgs, child: pulumi.ResourceOptions, capacity
    ) -> aws.ecs.Service:
        """The service, on Spot or on-demand, behind the load balancer when there is one."""
        placement = (
            {
                "capacity_provider_strategies": [
                    aws.ecs.ServiceCapacityProviderStrategyArgs(capacity_provider="FARGATE_SPOT", weight=1)
                ]
            }
            if s.capacity == "FARGATE_SPOT"
            else {"launch_type": "FARGATE"}
        )
        balancing: dict[str, Any] = {}
        listener = None
        if s.behind_nlb:
            listener = self._load_balancer(name, s, args, child)
            balancing = {
                "load_balancers": [
                    aws.ecs.ServiceLoadBalancerArgs(
                        target_group_arn=self.target_group.arn if self.target_group else None,
                        container_name="server",
                        container_port=s.container_port,
                    )
                ],
                "health_check_grace_period_seconds": 60,  # a cold start on a quarter of a vCPU
            }
        return aws.ecs.Service(
            f"{name}-service",
            name=s.service_name,
            cluster=self.cluster.arn,
            task_definition=self.task_definition.arn,
            # One owner for desiredCount: the stack config when it sets one, else the
            # control plane (created at 0, later changes ignored by Pulumi). The tag tells
            # the Lambdas and `fluidity start/stop` which it is.
            desired_count=s.desired_count if s.desired_count is not None else 0,
            tags={OWNER_TAG: PULUMI_OWNS if s.desired_count is not None else "control-plane"},
            network_configuration=aws.ecs.ServiceNetworkConfigurationArgs(
                subnets=args.subnet_ids,
                security_groups=[self.security_group.id],
                assign_public_ip=s.assign_public_ip == "ENABLED",
            ),
            # Without a load balancer, one task at one address: a deployment stops the old one
            # before the new one starts. Behind one, the new task is healthy before the old
            # one drains, and agents move over through the same name.
            deployment_minimum_healthy_percent=100 if s.behind_nlb else 0,
            deployment_maximum_percent=200 if s.behind_nlb else 100,
            **balancing,
            enable_ecs_managed_tags=True,
            propagate_tags="SERVICE",
            wait_for_steady_state=False,
            **placement,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[r for r in (capacity, listener) if r is not None] or None,
                ignore_changes=[] if s.desired_count is not None else ["desiredCount"],
            ),
        )

    # -- where agents come in ---------------------------------------------------------------
    def _group(self, resource_name: str, vpc_id, opts: pulumi.ResourceOptions, **args: Any) -> aws.ec2.SecurityGroup:
        return aws.ec2.SecurityGroup(
            resource_name,
            vpc_id=vpc_id,
            egress=[
                aws.ec2.SecurityGroupEgressArgs(
                    protocol="-1",
                    from_port=0,
                    to_port=0,
                    cidr_blocks=["0.0.0.0/0"],
                    description="onward to the internet",
                )
            ],
            opts=opts,
            **args,
        )

    def _agents_group(self, resource_name: str, what: str, s: StackSettings, vpc_id) -> aws.ec2.SecurityGroup:
        """The group agents come in through. With allowedIngressCidr, one fixed rule. Without
        it (the default), no rule at all: the control plane opens the port to each agent that
        wakes the server and closes it when the server stops, so Pulumi leaves the ingress
        rules to it (the tag tells the Lambdas which it is)."""
        tags = {INGRESS_TAG: "wakers" if s.ingress_for_wakers else "cidr"}
        if s.allowed_ingress_cidr is None:  # s.ingress_for_wakers
            return self._group(
                resource_name,
                vpc_id,
                pulumi.ResourceOptions(parent=self, ignore_changes=["ingress"]),
                description=f"Fluidity {what}: {s.container_port}/tcp from the agents that woke it",
                tags=tags,
            )
        return self._group(
            resource_name,
            vpc_id,
            pulumi.ResourceOptions(parent=self),
            description=f"Fluidity {what}: {s.container_port}/tcp from {s.allowed_ingress_cidr}",
            ingress=[_server_port(s, "agents (mTLS)", cidr_blocks=[s.allowed_ingress_cidr])],
            tags=tags,
        )

    def _load_balancer(
        self, name: str, s: StackSettings, args: FluidityServiceArgs, child: pulumi.ResourceOptions
    ) -> aws.lb.Listener:
        """stableEndpoint nlb: a Network Load Balancer passing TCP through untouched (mutual
        TLS stays end to end), client addresses preserved, targets the tasks' own IPs."""
        self.load_balancer = aws.lb.LoadBalancer(
            f"{name}-nlb",
            name=balancer_name(s.service_name),
            load_balancer_type="network",
            internal=False,
            subnets=args.subnet_ids,
            security_groups=[self.ingress_group.id],
            enable_cross_zone_load_balancing=True,
            opts=child,
        )
        self.target_group = aws.lb.TargetGroup(
            f"{name}-targets",
            name=balancer_name(s.service_name),
            port=s.container_port,
            protocol="TCP",
            target_type="ip",
            vpc_id=args.vpc_id,
            preserve_client_ip="true",
            # A leaving task keeps its connections this long: no shorter than the server's
            # own drain, in which it sends GOAWAY and agents move to another task.
            deregistration_delay=DRAIN_SECONDS,
            health_check=aws.lb.TargetGroupHealthCheckArgs(
                protocol="TCP", port="traffic-port", interval=10, healthy_threshold=2, unhealthy_threshold=2
            ),
            opts=child,
        )
        return aws.lb.Listener(
            f"{name}-listener",
            load_balancer_arn=self.load_balancer.arn,
            port=s.container_port,
            protocol="TCP",
            default_actions=[aws.lb.ListenerDefaultActionArgs(type="forward", target_group_arn=self.target_group.arn)],
            opts=child,
        )

    def _scale(self, name: str, s: StackSettings, child: pulumi.ResourceOptions) -> None:
        """maxTasks > 1: Application Auto Scaling keeps CPU near a target between 1 and
        maxTasks while the server runs. The control plane owns the lower bound (1 while
        running, 0 to stop), so Pulumi sets it once and then leaves it alone."""
        self.scaling_target = aws.appautoscaling.Target(
            f"{name}-scaling",
            service_namespace="ecs",
            scalable_dimension="ecs:service:DesiredCount",
            resource_id=pulumi.Output.all(self.cluster.name, self.service.name).apply(
                lambda names: f"service/{names[0]}/{names[1]}"
            ),
            min_capacity=0,
            max_capacity=s.max_tasks,
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["minCapacity"]),
        )
        aws.appautoscaling.Policy(
            f"{name}-scaling-cpu",
            policy_type="TargetTrackingScaling",
            service_namespace=self.scaling_target.service_namespace,
            scalable_dimension=self.scaling_target.scalable_dimension,
            resource_id=self.scaling_target.resource_id,
            target_tracking_scaling_policy_configuration=aws.appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationArgs(
                target_value=SCALE_AT_CPU_PERCENT,
                predefined_metric_specification=aws.appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationPredefinedMetricSpecificationArgs(
                    predefined_metric_type="ECSServiceAverageCPUUtilization"
                ),
                scale_out_cooldown=60,
                scale_in_cooldown=300,
            ),
            opts=child,
        )

    def _build_image(self, name: str, s: StackSettings, context: str, child: pulumi.ResourceOptions) -> pulumi.Output:
        """Build the server image from the repository's Dockerfile for the task's CPU
        architecture and push it to the stack's repository; the task names it by digest."""
        token = aws.ecr.get_authorization_token_output(registry_id=self.repository.registry_id)
        self.image = docker_build.Image(
            f"{name}-image",
            context=docker_build.BuildContextArgs(location=context),
            dockerfile=docker_build.DockerfileArgs(location=f"{context}/Dockerfile"),
            platforms=[PLATFORMS[s.cpu_architecture]],
            push=True,
            tags=[self.repository.repository_url.apply(lambda url: f"{url}:latest")],
            registries=[
                docker_build.RegistryArgs(
                    address=self.repository.repository_url.apply(lambda url: url.split("/", 1)[0]),
                    username=token.user_name,
                    password=token.password,
                )
            ],
            opts=child,
        )
        return pulumi.Output.all(self.repository.repository_url, self.image.digest).apply(
            lambda a: pinned_image(a[0], a[1])
        )
