"""ECS's part in the cloud rehearsal: the service's desired count, met with a real container.

When the declared service (in moto) asks for a task, this starts the server image named by
the task definition that moto holds (registered from the declared container definitions
verbatim): its command, its environment, its secrets read from SSM by their declared ARNs
with the execution role's credentials, its port, its user, its stop timeout, and its
health check run by Docker. The task is recorded in moto with the service's network
configuration and a public address (127.0.0.1), and its health follows Docker's verdict,
so the status endpoint finds it as it would find a Fargate task. The container's output
goes where the awslogs driver would send it (the declared log group, with the execution
role's credentials), and its embedded-metric-format lines become CloudWatch metrics, as
CloudWatch Logs would make them. A desired count of 0 stops the container.

The container runs with `--network host` (the only network here reaches nothing beyond
this machine); the one thing added to the declared command is `--egress-allow
127.0.0.0/8`, because the rehearsal's origin is on loopback, which the server refuses by
default.

Behind the stack's load balancer (the declared service names a target group) ECS runs as
many tasks as desiredCount says, each at an address of its own as its network interface
would give it: 127.0.0.11, .12, ... (`--host` and FLUIDITY_HOST for its health check are
then the other things added). ECS registers each running task with the target group and,
before stopping one, deregisters it and waits the group's deregistration delay, as it does
for a service with a load balancer.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from aws import MotoAws, Service
from moto_stack import Declared

REHEARSAL_OVERRIDES = ["--egress-allow", "127.0.0.0/8"]


@dataclass
class Task:
    """One running (or starting) task: its container, its ARN in moto, its own address."""

    container: str
    arn: str
    address: str
    port: int
    health: str = "UNKNOWN"
    registered: bool = False  # with the service's target group
    logs: subprocess.Popen | None = None
    log_thread: threading.Thread | None = None
    lines: list[str] = field(default_factory=list)  # what the server logged


def emf_metric_data(line: str) -> list[tuple[str, dict]]:
    """(namespace, PutMetricData datum) for each metric an embedded-metric-format line declares."""
    try:
        record = json.loads(line)
    except ValueError:
        return []
    if not isinstance(record, dict) or "_aws" not in record:
        return []
    stamp = record["_aws"]["Timestamp"] / 1000
    data = []
    for directive in record["_aws"]["CloudWatchMetrics"]:
        for dimension_set in directive["Dimensions"]:
            for metric in directive["Metrics"]:
                data.append(
                    (
                        directive["Namespace"],
                        {
                            "MetricName": metric["Name"],
                            "Dimensions": [{"Name": d, "Value": str(record[d])} for d in dimension_set],
                            "Value": float(record[metric["Name"]]),
                            "Unit": metric.get("Unit", "None"),
                            "Timestamp": stamp,
                        },
                    )
                )
    return data


def _inspect(container: str, template: str) -> str:
    return subprocess.run(
        ["docker", "inspect", "-f", template, container], capture_output=True, text=True, timeout=30
    ).stdout


class Fargate:
    def __init__(
        self, aws: MotoAws, declared: Declared, image: str, execution_credentials: dict, workdir: Path, events
    ) -> None:
        self.aws, self.declared, self.image, self.workdir, self.events = aws, declared, image, workdir, events
        service = declared.service()
        self.cluster_arn, self.service_name = service.inputs["cluster"], service.inputs["name"]
        cluster = self.cluster_arn.rsplit("/", 1)[-1]
        network = service.inputs["networkConfiguration"]
        self.service = Service(cluster, self.service_name, network["subnets"][0], network["securityGroups"][0])
        self.execution = boto3.session.Session(
            aws_access_key_id=execution_credentials["AccessKeyId"],
            aws_secret_access_key=execution_credentials["SecretAccessKey"],
            aws_session_token=execution_credentials["SessionToken"],
            region_name=aws.region,
        )
        balancers = service.inputs.get("loadBalancers") or []
        self.target_group = balancers[0]["targetGroupArn"] if balancers else None
        self.tasks: list[Task] = []  # running or starting, oldest first
        self.starts = 0
        self.metrics_put = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    # -- the loop ECS runs ----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.tick()
            except Exception as e:  # recorded: the rehearsal fails on it
                self.errors.append(f"{type(e).__name__}: {e}")

    def tick(self) -> None:
        with self._lock:
            service = self.aws.client("ecs").describe_services(cluster=self.cluster_arn, services=[self.service_name])[
                "services"
            ][0]
            desired = service["desiredCount"]
            if len(self.tasks) < desired and (self.target_group or not self.tasks):
                self._launch(service["taskDefinition"])
            elif len(self.tasks) > desired:
                self._stop_task(self.tasks[-1], "Scaling activity initiated by (service fluidity)")
            for task in list(self.tasks):
                self._follow_health(task)

    # The first task, as the single-task rehearsal looks at it.
    @property
    def container(self) -> str | None:
        return self.tasks[0].container if self.tasks else None

    @property
    def health(self) -> str:
        return self.tasks[0].health if self.tasks else "UNKNOWN"

    def interrupt(self, task: Task) -> float:
        """Stop one task as Spot or a new revision would, while desiredCount stays: ECS then
        starts another. Returns when the container got SIGTERM (time.monotonic())."""
        with self._lock:
            return self._stop_task(task, "Task stopped: Spot interruption (rehearsal)")

    def _launch(self, task_definition_arn: str) -> None:
        ecs = self.aws.client("ecs")
        definition = ecs.describe_task_definition(taskDefinition=task_definition_arn)["taskDefinition"]
        assert len(definition["containerDefinitions"]) == 1, "one container expected"
        container = definition["containerDefinitions"][0]
        declared_image = container["image"]
        assert declared_image.endswith("@" + self.image), (
            f"the task definition names {declared_image}, not the image that was built ({self.image})"
        )
        secrets = self._secrets(container.get("secrets", []))
        env = {e["name"]: e["value"] for e in container.get("environment", [])} | secrets
        check = container["healthCheck"]
        assert check["command"][0] == "CMD", "an exec-form health check (CMD) expected"
        port = container["portMappings"][0]["containerPort"]
        self.starts += 1
        name = f"fluidity-rehearsal-{self.starts}-{int(time.time())}"
        # Its own address behind a load balancer (an ENI of its own); the host's otherwise.
        address = f"127.0.0.{10 + self.starts}" if self.target_group else "127.0.0.1"
        args = [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            "--stop-timeout",
            str(container.get("stopTimeout", 30)),
        ]
        args += [
            "--health-cmd",
            shlex.join(check["command"][1:]),
            "--health-interval",
            f"{check['interval']}s",
            "--health-timeout",
            f"{check['timeout']}s",
        ]
        args += ["--health-retries", str(check["retries"]), "--health-start-period", f"{check['startPeriod']}s"]
        if container.get("user"):
            args += ["--user", container["user"]]
        own_address = ["--host", address] if self.target_group else []
        if self.target_group:
            env["FLUIDITY_HOST"] = address
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        args += [self.image, *container.get("command", []), *REHEARSAL_OVERRIDES, *own_address]
        subprocess.run(args, check=True, capture_output=True, timeout=60)
        self.events("container started", f"{name}, {address}:{port}")
        arn = self.aws.start_task(self.service, public_ip=address, task_definition=task_definition_arn)["taskArn"]
        task = Task(name, arn, address, port)
        self.tasks.append(task)
        self.aws.set_health(self.service, "UNKNOWN", task_arn=arn)
        self._follow_logs(task, container["logConfiguration"])

    def container_uid(self) -> str:
        """Who the server runs as: the image's USER, unless the task definition names one."""
        return subprocess.run(
            ["docker", "exec", str(self.container), "id", "-u"], capture_output=True, text=True, timeout=30
        ).stdout.strip()

    def _secrets(self, secrets: list[dict]) -> dict[str, str]:
        """What the ECS agent does with the execution role: SSM parameters by ARN."""
        if not secrets:
            return {}
        ssm = self.execution.client("ssm", endpoint_url=self.aws.url)
        answer = ssm.get_parameters(Names=[s["valueFrom"] for s in secrets], WithDecryption=True)
        assert not answer["InvalidParameters"], f"secrets not found in SSM: {answer['InvalidParameters']}"
        by_arn = {p["ARN"]: p["Value"] for p in answer["Parameters"]}
        return {s["name"]: by_arn[s["valueFrom"]] for s in secrets}

    def _follow_health(self, task: Task) -> None:
        state = _inspect(task.container, "{{.State.Running}} {{.State.Health.Status}}").split()
        if not state or state[0] != "true":
            self.events("container exited", task.container)
            self._stop_task(task, "Essential container in task exited")
            return
        health = {"healthy": "HEALTHY", "unhealthy": "UNHEALTHY"}.get(state[1], "UNKNOWN")
        if health != task.health:
            task.health = health
            self.aws.set_health(self.service, health, task_arn=task.arn)
            self.events(f"task {health.lower()}", f"{task.container}: Docker ran the declared health check")
            if health == "HEALTHY" and self.target_group and not task.registered:
                self.aws.client("elbv2").register_targets(
                    TargetGroupArn=self.target_group, Targets=[{"Id": task.address, "Port": task.port}]
                )
                task.registered = True
                self.events("target registered", f"{task.address}:{task.port}")

    def _stop_task(self, task: Task, reason: str) -> float:
        if task.registered and self.target_group:
            elbv2 = self.aws.client("elbv2")
            elbv2.deregister_targets(
                TargetGroupArn=self.target_group, Targets=[{"Id": task.address, "Port": task.port}]
            )
            task.registered = False
            attributes = elbv2.describe_target_group_attributes(TargetGroupArn=self.target_group)["Attributes"]
            delay = next(int(a["Value"]) for a in attributes if a["Key"] == "deregistration_delay.timeout_seconds")
            self.events("target deregistered", f"{task.address}: draining for {delay}s before the task stops")
            time.sleep(delay)
        started = time.monotonic()
        subprocess.run(["docker", "stop", task.container], capture_output=True, timeout=120)
        code = _inspect(task.container, "{{.State.ExitCode}}").strip()
        self.events("container stopped", f"{task.container}: exit {code} after {time.monotonic() - started:.1f}s")
        self._drain_logs(task)
        subprocess.run(["docker", "rm", "-f", task.container], capture_output=True, timeout=60)
        self.aws.client("ecs").stop_task(cluster=self.cluster_arn, task=task.arn, reason=reason)
        if task in self.tasks:
            self.tasks.remove(task)
        return started

    # -- the awslogs driver and CloudWatch Logs' metric extraction ------------------------
    def _follow_logs(self, task: Task, configuration: dict) -> None:
        assert configuration["logDriver"] == "awslogs"
        options = configuration["options"]
        assert options["awslogs-region"] == self.aws.region, (
            f"logs go to {options['awslogs-region']}, the stack is in {self.aws.region}"
        )
        group = options["awslogs-group"]
        stream = f"{options['awslogs-stream-prefix']}/server/{task.arn.rsplit('/', 1)[-1]}"
        client = self.execution.client("logs", endpoint_url=self.aws.url)
        client.create_log_stream(logGroupName=group, logStreamName=stream)
        task.logs = subprocess.Popen(
            ["docker", "logs", "-f", task.container], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        task.log_thread = threading.Thread(target=self._ship_logs, args=(task, client, group, stream), daemon=True)
        task.log_thread.start()

    def _ship_logs(self, task: Task, client, group: str, stream: str) -> None:
        cloudwatch = self.aws.client("cloudwatch")
        assert task.logs is not None and task.logs.stdout is not None
        copy_name = "server-container.log" if not self.target_group else f"server-{task.container}.log"
        with open(self.workdir / copy_name, "ab") as copy:
            for raw in task.logs.stdout:
                copy.write(raw)
                copy.flush()
                line = raw.decode(errors="replace").rstrip("\n")
                task.lines.append(line)
                try:
                    client.put_log_events(
                        logGroupName=group,
                        logStreamName=stream,
                        logEvents=[{"timestamp": int(time.time() * 1000), "message": line}],
                    )
                    for namespace, datum in emf_metric_data(line):
                        cloudwatch.put_metric_data(Namespace=namespace, MetricData=[datum])
                        self.metrics_put += 1
                except Exception as e:
                    self.errors.append(f"shipping logs: {type(e).__name__}: {e}")

    def _drain_logs(self, task: Task) -> None:
        if task.logs is not None:
            try:
                task.logs.wait(10)
                if task.log_thread is not None:
                    task.log_thread.join(10)
            except subprocess.TimeoutExpired:
                task.logs.kill()
            task.logs = None

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        with self._lock:
            for task in list(self.tasks):
                task.registered = False  # the rehearsal is over: no draining wait
                self._stop_task(task, "rehearsal over")
