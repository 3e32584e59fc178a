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
"""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
import time
from pathlib import Path

import boto3
from aws import MotoAws, Service
from moto_stack import Declared

REHEARSAL_OVERRIDES = ["--egress-allow", "127.0.0.0/8"]


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
        self.container: str | None = None
        self.task_arn: str | None = None
        self.starts = 0
        self.metrics_put = 0
        self.health = "UNKNOWN"
        self._logs: subprocess.Popen | None = None
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
            if desired >= 1 and self.container is None:
                self._launch(service["taskDefinition"])
            elif self.container is not None and desired == 0:
                self._stop_task("Scaling activity initiated by (service fluidity)")
            elif self.container is not None:
                self._follow_health()

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
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        args += [self.image, *container.get("command", []), *REHEARSAL_OVERRIDES]
        subprocess.run(args, check=True, capture_output=True, timeout=60)
        self.container = name
        self.events("container started", f"{name}, port {port}")
        task = self.aws.start_task(self.service, public_ip="127.0.0.1", task_definition=task_definition_arn)
        self.task_arn = task["taskArn"]
        self.health = "UNKNOWN"
        self.aws.set_health(self.service, "UNKNOWN")
        self._follow_logs(container["logConfiguration"], self.task_arn.rsplit("/", 1)[-1])

    def container_uid(self) -> str:
        """Who the server runs as: the image's USER, unless the task definition names one."""
        return subprocess.run(
            ["docker", "exec", self.container, "id", "-u"], capture_output=True, text=True, timeout=30
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

    def _follow_health(self) -> None:
        state = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Running}} {{.State.Health.Status}}", self.container],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        if not state or state[0] != "true":
            self.events("container exited", self.container)
            self._stop_task("Essential container in task exited")
            return
        health = {"healthy": "HEALTHY", "unhealthy": "UNHEALTHY"}.get(state[1], "UNKNOWN")
        if health != self.health:
            self.health = health
            self.aws.set_health(self.service, health)
            self.events(f"task {health.lower()}", "Docker ran the declared health check")

    def _stop_task(self, reason: str) -> None:
        if self.container is not None:
            started = time.monotonic()
            subprocess.run(["docker", "stop", self.container], capture_output=True, timeout=120)
            code = subprocess.run(
                ["docker", "inspect", "-f", "{{.State.ExitCode}}", self.container],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
            self.events("container stopped", f"exit {code} after {time.monotonic() - started:.1f}s")
            self._drain_logs()
            subprocess.run(["docker", "rm", "-f", self.container], capture_output=True, timeout=60)
            self.container = None
        if self.task_arn is not None:
            self.aws.client("ecs").stop_task(cluster=self.cluster_arn, task=self.task_arn, reason=reason)
            self.task_arn = None

    # -- the awslogs driver and CloudWatch Logs' metric extraction ------------------------
    def _follow_logs(self, configuration: dict, task_id: str) -> None:
        assert configuration["logDriver"] == "awslogs"
        options = configuration["options"]
        assert options["awslogs-region"] == self.aws.region, (
            f"logs go to {options['awslogs-region']}, the stack is in {self.aws.region}"
        )
        self._group, self._stream = options["awslogs-group"], f"{options['awslogs-stream-prefix']}/server/{task_id}"
        self._logs_client = self.execution.client("logs", endpoint_url=self.aws.url)
        self._logs_client.create_log_stream(logGroupName=self._group, logStreamName=self._stream)
        self._logs = subprocess.Popen(
            ["docker", "logs", "-f", self.container], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self._log_thread = threading.Thread(target=self._ship_logs, args=(self._logs,), daemon=True)
        self._log_thread.start()

    def _ship_logs(self, process: subprocess.Popen) -> None:
        cloudwatch = self.aws.client("cloudwatch")
        with open(self.workdir / "server-container.log", "ab") as copy:
            for raw in process.stdout:
                copy.write(raw)
                copy.flush()
                line = raw.decode(errors="replace").rstrip("\n")
                try:
                    self._logs_client.put_log_events(
                        logGroupName=self._group,
                        logStreamName=self._stream,
                        logEvents=[{"timestamp": int(time.time() * 1000), "message": line}],
                    )
                    for namespace, datum in emf_metric_data(line):
                        cloudwatch.put_metric_data(Namespace=namespace, MetricData=[datum])
                        self.metrics_put += 1
                except Exception as e:
                    self.errors.append(f"shipping logs: {type(e).__name__}: {e}")

    def _drain_logs(self) -> None:
        if self._logs is not None:
            try:
                self._logs.wait(10)
                self._log_thread.join(10)
            except subprocess.TimeoutExpired:
                self._logs.kill()
            self._logs = None

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        with self._lock:
            self._stop_task("rehearsal over")
