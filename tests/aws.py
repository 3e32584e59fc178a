"""moto's server on loopback: real HTTP and real botocore serialisation, no AWS account.

`MotoAws` also plays the part of ECS's service scheduler, which moto does not model:
`reconcile()` starts a Fargate task for a service whose desiredCount asks for one (with
an Elastic IP on its ENI, so the task has a "public" address, here a loopback one) and
stops the tasks of a service scaled to 0.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from dataclasses import dataclass

import boto3
from moto.server import ThreadedMotoServer
from support import free_port, stop_process

REGION = "us-east-1"


@dataclass
class Service:
    cluster: str
    name: str
    subnet: str
    security_group: str


class MotoAws:
    def __init__(self, region: str = REGION, address: str = "127.0.0.1") -> None:
        """`address`: where moto listens (the firewall lab puts it on a link of its own)."""
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.region = region
        self.credentials = ("testing", "testing")  # until `use_credentials` names an IAM user
        self.port = free_port() if address == "127.0.0.1" else 5000
        self.server = ThreadedMotoServer(ip_address=address, port=self.port, verbose=False)
        self.server.start()
        self.url = f"http://{address}:{self.port}"
        self._clients: dict = {}
        for name in ("ecs", "ec2", "cloudwatch"):  # made up front: the scheduler thread shares them
            self.client(name)
        self.reset()

    @property
    def env(self) -> dict:
        """What a process needs to talk to this moto server instead of AWS."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self, name: str):
        if name not in self._clients:
            self._clients[name] = boto3.session.Session().client(
                name,
                endpoint_url=self.url,
                region_name=self.region,
                aws_access_key_id=self.credentials[0],
                aws_secret_access_key=self.credentials[1],
            )
        return self._clients[name]

    def use_credentials(self, key_id: str, secret: str) -> None:
        """Sign every later call as this IAM identity (needed once moto enforces IAM)."""
        self.credentials = (key_id, secret)
        self._clients = {}

    def reset(self) -> None:
        self._post("/moto-api/reset", b"")
        # moto advances a task's state each time it is described (RUNNING -> DEACTIVATING
        # -> ...); a Fargate task stays RUNNING until it is stopped.
        self._post(
            "/moto-api/state-manager/set-transition",
            json.dumps({"model_name": "ecs::task", "transition": {"progression": "manual", "times": 10**9}}).encode(),
        )

    def _post(self, path: str, body: bytes) -> None:
        # A reset rebuilds every backend loaded in this process, IAM with AWS's managed
        # policies where a test asks for them: 6 s here, over 10 s once under a loaded CI.
        request = urllib.request.Request(f"{self.url}{path}", data=body, method="POST")
        urllib.request.urlopen(request, timeout=90).read()

    def stop(self) -> None:
        self.server.stop()

    # -- ECS ---------------------------------------------------------------------------------
    def set_health(self, service: Service, health: str, task_arn: str | None = None) -> None:
        """What ECS's health check concludes, on the service's running tasks (or the one
        named): moto has no health checks of its own, it reports every container HEALTHY."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.ecs.models import ecs_backends

        tasks = ecs_backends[DEFAULT_ACCOUNT_ID][self.region].tasks.get(service.cluster, {})
        for task in tasks.values():
            if task_arn is not None and task.task_arn != task_arn:
                continue
            for container in task.containers:
                container.health_status = health

    def make_service(
        self,
        cluster: str = "fluidity",
        name: str = "fluidity-server",
        desired: int = 0,
        port: int = 443,
        health_check: bool = False,
        wakers: bool = False,
        balanced: bool = False,
        spot: bool = False,
    ) -> Service:
        """`wakers`: the security group is tagged as the Pulumi program tags it when the
        control plane opens the port to the agents that wake the server. `balanced`: behind
        a Network Load Balancer (stableEndpoint nlb), whose group is then the one agents
        come in through (the Service's security_group)."""
        ec2, ecs = self.client("ec2"), self.client("ecs")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # as in a default VPC
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName=f"{name}-sg", Description="fluidity", VpcId=vpc)["GroupId"]
        task_group, balancing = group, {}
        if balanced:
            task_group = ec2.create_security_group(GroupName=f"{name}-task-sg", Description="task", VpcId=vpc)[
                "GroupId"
            ]
            elbv2 = self.client("elbv2")
            balancer = elbv2.create_load_balancer(
                Name=name[:32], Subnets=[subnet], SecurityGroups=[group], Type="network", Scheme="internet-facing"
            )["LoadBalancers"][0]
            targets = elbv2.create_target_group(Name=name[:32], Protocol="TCP", Port=port, VpcId=vpc, TargetType="ip")[
                "TargetGroups"
            ][0]
            elbv2.create_listener(
                LoadBalancerArn=balancer["LoadBalancerArn"],
                Protocol="TCP",
                Port=port,
                DefaultActions=[{"Type": "forward", "TargetGroupArn": targets["TargetGroupArn"]}],
            )
            balancing = {
                "loadBalancers": [
                    {"targetGroupArn": targets["TargetGroupArn"], "containerName": "server", "containerPort": port}
                ]
            }
        if wakers:
            ec2.create_tags(Resources=[group], Tags=[{"Key": "fluidity:ingress", "Value": "wakers"}])
        placement: dict = {"launchType": "FARGATE"}
        if spot:  # capacity: FARGATE_SPOT, as infra/service.py declares it
            ecs.create_cluster(clusterName=cluster, capacityProviders=["FARGATE", "FARGATE_SPOT"])
            placement = {"capacityProviderStrategy": [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]}
        else:
            ecs.create_cluster(clusterName=cluster)
        ecs.register_task_definition(
            family=name,
            networkMode="awsvpc",
            requiresCompatibilities=["FARGATE"],
            cpu="256",
            memory="512",
            containerDefinitions=[
                {
                    "name": "server",
                    "image": "fluidity:latest",
                    "cpu": 256,
                    "memory": 512,
                    "portMappings": [{"containerPort": port}],
                }
                | (
                    {"healthCheck": {"command": ["CMD", "python3", "-m", "tunnel.server.healthcheck"], "interval": 5}}
                    if health_check
                    else {}
                )
            ],
        )
        ecs.create_service(
            cluster=cluster,
            serviceName=name,
            taskDefinition=name,
            desiredCount=desired,
            **placement,
            networkConfiguration={
                "awsvpcConfiguration": {
                    "subnets": [subnet],
                    "securityGroups": [task_group],
                    "assignPublicIp": "ENABLED",
                }
            },
            **balancing,
        )
        return Service(cluster, name, subnet, group)

    def desired_count(self, service: Service) -> int:
        found = self.client("ecs").describe_services(cluster=service.cluster, services=[service.name])["services"]
        return found[0]["desiredCount"]

    def service_tasks(self, service: Service, status: str = "RUNNING") -> list[dict]:
        ecs = self.client("ecs")
        arns = ecs.list_tasks(cluster=service.cluster, desiredStatus=status)["taskArns"]
        if not arns:
            return []
        tasks = ecs.describe_tasks(cluster=service.cluster, tasks=arns)["tasks"]
        return [t for t in tasks if t.get("group") == f"service:{service.name}"]

    def start_task(self, service: Service, public_ip: str = "127.0.0.1", task_definition: str | None = None) -> dict:
        ecs, ec2 = self.client("ecs"), self.client("ec2")
        task = ecs.run_task(
            cluster=service.cluster,
            taskDefinition=task_definition or service.name,
            launchType="FARGATE",
            group=f"service:{service.name}",
            startedBy="ecs-svc/1234567890",
            networkConfiguration={
                "awsvpcConfiguration": {
                    "subnets": [service.subnet],
                    "securityGroups": [service.security_group],
                    "assignPublicIp": "ENABLED",
                }
            },
        )["tasks"][0]
        if public_ip:
            eni = next(d["value"] for d in task["attachments"][0]["details"] if d["name"] == "networkInterfaceId")
            allocation = ec2.allocate_address(Domain="vpc", Address=public_ip)["AllocationId"]
            ec2.associate_address(AllocationId=allocation, NetworkInterfaceId=eni)
        return task

    def reconcile(self, service: Service, public_ip: str = "127.0.0.1") -> None:
        """One pass of the scheduler ECS would run: tasks follow desiredCount."""
        desired = self.desired_count(service)
        running = self.service_tasks(service)
        for _ in range(desired - len(running)):
            self.start_task(service, public_ip)
        for task in running[desired:]:
            self.client("ecs").stop_task(
                cluster=service.cluster, task=task["taskArn"], reason="Scaling activity initiated by deployment"
            )


class ControlPlaneProc:
    """`fluidity control-plane` in its own process, talking to moto."""

    def __init__(
        self,
        moto: MotoAws,
        workdir,
        api_key: str = "test-api-key",
        extra_env: dict | None = None,
        tls: tuple | None = None,
    ) -> None:
        """`tls`: (certificate, key) files: serve HTTPS, as API Gateway does."""
        import os
        import subprocess

        from support import FLUIDITY, wait_for_port

        self.api_key = api_key
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        flags = ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])] if tls else []
        self.log_path = workdir / "control-plane.log"
        env = {
            **os.environ,
            **moto.env,
            "CLUSTER_NAME": "fluidity",
            "SERVICE_NAME": "fluidity-server",
            **(extra_env or {}),
            "FLUIDITY_API_KEY": api_key,  # never on the command line: every user can read those
        }
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [FLUIDITY, "control-plane", "--api-key", "env:FLUIDITY_API_KEY", "--port", str(self.port), *flags],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        wait_for_port(self.port, process=self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        return stop_process(self.process)


class EcsScheduler:
    """Runs `reconcile` in a thread, as ECS would: a task starts `start_delay` seconds
    after desiredCount asks for it (None: never), and stops when scaled to 0."""

    def __init__(
        self, moto: MotoAws, service: Service, start_delay: float | None = 0.0, public_ip: str = "127.0.0.1"
    ) -> None:
        import threading

        self.moto, self.service, self.start_delay, self.public_ip = moto, service, start_delay, public_ip
        self._wanted_since: float | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self._tick()
            except Exception:  # moto is being reset between tests
                pass

    def _tick(self) -> None:
        desired = self.moto.desired_count(self.service)
        running = self.moto.service_tasks(self.service)
        if desired > len(running):
            self._wanted_since = self._wanted_since or time.monotonic()
            if self.start_delay is not None and time.monotonic() - self._wanted_since >= self.start_delay:
                self.moto.reconcile(self.service, self.public_ip)
                self._wanted_since = None
        else:
            self._wanted_since = None
            if desired < len(running):
                self.moto.reconcile(self.service, self.public_ip)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)
