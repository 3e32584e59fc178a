"""`fluidity start | stop | status`: the operator's view of the ECS service, with boto3.

Honours AWS_PROFILE, AWS_REGION (or AWS_DEFAULT_REGION) and AWS_ENDPOINT_URL like every
AWS tool, and `--region` / `--profile`. The status
words and the public-IP lookup are the Lambdas' own (`deployment.ecs_state`), so the CLI,
the control plane and the agent never disagree about what "running" means.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from deployment import ecs_state, ingress, scaling
from deployment.metric_names import ACTIVE_CONNECTIONS, LAST_ACTIVITY
from deployment.metric_reads import newest_maximum
from deployment.settings import Settings
from tunnel.redaction import redact
from tunnel.wire.addresses import is_loopback

HINTS = """If the task never reaches RUNNING:
  * the image must exist in ECR: docker push to `pulumi stack output repositoryUrl` (tag latest)
  * the subnets need a route to an internet gateway, with assignPublicIp ENABLED, to pull it
  * the service's recent events:
      aws ecs describe-services --cluster {cluster} --services {service} --query 'services[0].events[:5]'
  * the container's own log: aws logs tail /fluidity/server --since 15m"""


class OperatorError(Exception):
    """Printed as one line (plus hints) and a non-zero exit."""


@dataclass(frozen=True)
class AwsTarget:
    """Where the commands act: `--region` / `--profile`, else the environment and profile.

    AWS_REGION is honoured as well as AWS_DEFAULT_REGION (botocore reads only the latter,
    while most AWS tools and SDKs read the former)."""

    region: str | None = None
    profile: str | None = None

    @property
    def resolved_region(self) -> str | None:
        return self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def _clients(target: AwsTarget = AwsTarget()):
    try:
        import boto3
    except ImportError:
        raise OperatorError(
            "this command talks to AWS and needs boto3 (pip install boto3, or pipx inject fluidity boto3)"
        ) from None
    from botocore.config import Config
    from botocore.exceptions import NoRegionError, ProfileNotFound

    try:
        session = boto3.session.Session(profile_name=target.profile or None, region_name=target.resolved_region)
    except ProfileNotFound:
        raise OperatorError(f"no AWS profile named {target.profile!r} (see `aws configure list-profiles`)") from None
    config = Config(connect_timeout=10, read_timeout=20, retries={"max_attempts": 3, "mode": "standard"})
    try:
        return (
            session.client("ecs", config=config),
            session.client("ec2", config=config),
            session.client("cloudwatch", config=config),
        )
    except NoRegionError:
        raise OperatorError(
            "no AWS region: pass --region, or set AWS_REGION (or AWS_DEFAULT_REGION, or a region in your AWS profile)"
        ) from None


def _session(target: AwsTarget):
    """The operator's AWS session (after `_clients` has checked it can be made)."""
    import boto3

    return boto3.session.Session(profile_name=target.profile or None, region_name=target.resolved_region)


def _set_desired(ecs, settings: Settings, count: int, target: AwsTarget) -> None:
    """desiredCount as the control plane sets it: where Application Auto Scaling has the
    service (maxTasks > 1), its lower bound moves too (1 to run, 0 to stop)."""
    from botocore.exceptions import BotoCoreError, ClientError

    autoscaling = _session(target).client("application-autoscaling")
    try:
        settings = dataclasses.replace(
            settings, max_tasks=scaling.max_tasks_of(autoscaling, settings.cluster, settings.service)
        )
    except (ClientError, BotoCoreError):  # not allowed to look: one task, as before
        pass
    _aws_call(ecs_state.set_desired, ecs, settings, count, autoscaling=autoscaling)


def _aws_call(fn, *args, **kwargs):
    """Run a boto3-using function, turning AWS failures into one readable line."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        return fn(*args, **kwargs)
    except ecs_state.ServiceMissing as e:
        raise OperatorError(f"{e} (check --cluster/--service, or `pulumi stack output`)") from None
    except ecs_state.OwnedByPulumi as e:
        raise OperatorError(str(e)) from None
    except NoCredentialsError:
        raise OperatorError(
            "no AWS credentials found: set AWS_PROFILE, run `aws configure`, or export "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        ) from None
    except ClientError as e:
        err = e.response.get("Error", {})
        code = err.get("Code", "Error")
        if code in ("ClusterNotFoundException", "ServiceNotFoundException"):
            raise OperatorError(f"{code}: {err.get('Message', '')} (check --cluster/--service)") from None
        raise OperatorError(f"AWS {e.operation_name} failed: {code}: {err.get('Message', '')}") from None
    except BotoCoreError as e:
        raise OperatorError(f"AWS call failed: {e}") from None


def _with_task_port(ecs, settings: Settings, service: dict) -> Settings:
    """The port agents dial is the container's, as the task definition says."""
    try:
        definition = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
        port = definition["containerDefinitions"][0]["portMappings"][0]["containerPort"]
        return dataclasses.replace(settings, container_port=int(port))
    except Exception:
        return settings


def _ago(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "-"
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    seconds = max(0, int(now - epoch))
    age = f"{seconds}s" if seconds < 120 else f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"
    return f"{stamp} ({age} ago)"


def _progress_word(state: dict) -> str:
    if state["status"] == "running":
        return f"RUNNING, public IP {state['publicIp']}" if state["publicIp"] else "RUNNING, waiting for its public IP"
    if state["taskStatus"]:
        return f"task {state['taskStatus']}"
    return "waiting for ECS to place a task" if state["desiredCount"] else "no task"


def _balancer(service: dict, elbv2) -> dict | None:
    """The load balancer in front of the service (stableEndpoint nlb), as elbv2 describes it."""
    balanced = [b["targetGroupArn"] for b in service.get("loadBalancers") or [] if b.get("targetGroupArn")]
    if not balanced or elbv2 is None:
        return None
    target_groups = elbv2.describe_target_groups(TargetGroupArns=balanced[:1]).get("TargetGroups", [])
    arns = [arn for g in target_groups for arn in g.get("LoadBalancerArns", [])]
    found = elbv2.describe_load_balancers(LoadBalancerArns=arns[:1]).get("LoadBalancers", []) if arns else []
    return found[0] if found else None


def _waker_ingress(ec2, service: dict, port: int, elbv2=None):
    """The security group agents come in through, when the control plane manages its port
    for wakers (tagged so by the Pulumi program), else None (a fixed CIDR, or not ours):
    the task's own, or behind the stack's load balancer (stableEndpoint nlb) the balancer's."""
    groups = ((service.get("networkConfiguration") or {}).get("awsvpcConfiguration") or {}).get("securityGroups") or []
    balancer = _balancer(service, elbv2)
    if balancer is not None:
        groups = balancer.get("SecurityGroups", [])
    for group in ec2.describe_security_groups(GroupIds=groups[:1]).get("SecurityGroups", []) if groups else []:
        if any(t.get("Key") == ingress.INGRESS_TAG and t.get("Value") == "wakers" for t in group.get("Tags", [])):
            return ingress.IngressSettings(group_id=group["GroupId"], port=port)
    return None


def my_address(status_url: str, api_key: str, timeout: float = 10.0) -> str:
    """This machine's address as the control plane sees it (its status endpoint's `callerIp`)."""
    request = urllib.request.Request(status_url, headers={"x-api-key": api_key, "Accept": "application/json"})
    # The environment's proxy, except for this machine: its plain http:// key stays on it.
    host = urllib.parse.urlsplit(status_url).hostname or ""
    handlers = [urllib.request.ProxyHandler({})] if is_loopback(host) else []
    shown = redact(status_url)
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=timeout) as answer:
            caller = json.load(answer).get("callerIp")
    except (OSError, ValueError) as e:
        raise OperatorError(f"cannot ask {shown} for this machine's address: {redact(str(e))}") from None
    if not caller:
        raise OperatorError(
            f"{shown} did not say which address it sees (callerIp); pass --allow-ip with your public IPv4"
        )
    return caller


def start(
    settings: Settings,
    timeout: float,
    poll: float,
    write_config: str | None,
    out=sys.stdout,
    aws: AwsTarget = AwsTarget(),
    allow_ip: str | None = None,
) -> int:
    """`allow_ip`: an address to open the server's port to (where the control plane opens
    it only to wakers), or None."""
    ecs, ec2, _ = _clients(aws)
    service = _aws_call(ecs_state.describe_service, ecs, settings)
    settings = _with_task_port(ecs, settings, service)
    elbv2 = _session(aws).client("elbv2")
    wakers = _aws_call(_waker_ingress, ec2, service, settings.container_port, elbv2)
    balancer = _aws_call(_balancer, service, elbv2)
    if balancer is not None:  # agents dial its name, which stays the same at every start
        settings = dataclasses.replace(settings, stable_endpoint=balancer["DNSName"])
    if wakers is not None:
        _open_port(ec2, wakers, settings, allow_ip, out)
    _want_one_task(ecs, service, settings, aws, out)
    state = _wait_until_running(ecs, ec2, settings, timeout, poll, out)
    _print_where(state, write_config, out)
    return 0


def _open_port(ec2, wakers, settings: Settings, allow_ip: str | None, out) -> None:
    """Where only wakers may reach the server: opens its port to `allow_ip`, or says how to."""
    if allow_ip:
        opened = _aws_call(ingress.allow, ec2, wakers, allow_ip, time.time())
        print(f"opened port {settings.container_port} to {opened['allowed']}", file=out, flush=True)
        return
    print(
        f"note: port {settings.container_port} is open only to addresses that woke the server (agents with a "
        f"lifecycle block add "
        "themselves); add this machine's with --allow-ip IP, or --allow-ip auto --status-url URL (the key in "
        "$FLUIDITY_API_KEY, or --api-key env:VAR, file:PATH or keyring)",
        file=out,
        flush=True,
    )


def _want_one_task(ecs, service: dict, settings: Settings, aws: AwsTarget, out) -> None:
    """desiredCount 1 unless the service already wants a task."""
    if int(service.get("desiredCount", 0)) != 0:
        print(
            f"{settings.cluster}/{settings.service} is already wanted (desiredCount {service['desiredCount']})",
            file=out,
            flush=True,
        )
        return
    _set_desired(ecs, settings, 1, aws)
    try:
        ecs_state.mark_woken(ecs, service)
    except Exception:
        pass
    print(f"asked ECS to run {settings.cluster}/{settings.service} (desiredCount 1)", file=out, flush=True)


def _wait_until_running(ecs, ec2, settings: Settings, timeout: float, poll: float, out) -> dict:
    """Polls the service until its task runs with an address, printing each new stage; an
    OperatorError with the service's recent events after `timeout`."""
    began = time.monotonic()
    shown = None
    while True:
        state = _aws_call(ecs_state.state, ecs, ec2, settings)
        word = _progress_word(state)
        if word != shown:
            print(f"  [{round(time.monotonic() - began):>3}s] {word}", file=out, flush=True)
            shown = word
        if state["status"] == "running" and (state["publicIp"] or state.get("endpoint")):
            return state
        if time.monotonic() - began >= timeout:
            stuck = state["taskStatus"] or "no task placed"
            events = _recent_events(ecs, settings)
            raise OperatorError(
                f"timed out after {timeout:g}s: the task was stuck in {stuck}\n"
                + (f"Recent service events:\n{events}\n" if events else "")
                + HINTS.format(cluster=settings.cluster, service=settings.service)
            )
        time.sleep(poll)


def _print_where(state: dict, write_config: str | None, out) -> None:
    """The address agents dial (the load balancer's name where there is one), written to the
    config when asked, and how to start the agent."""
    ip, port = state["publicIp"], state["port"]
    named = (
        f" (public DNS name {state['publicDnsName']}: give that as server_ip behind a proxy that refuses bare "
        f"addresses)"
        if state.get("publicDnsName")
        else ""
    )
    if state.get("endpoint"):
        ip, named = state["endpoint"], " (the stack's load balancer: the name stays the same at every start)"
    print(f"\nThe server is running at {ip}:{port}{named}.", file=out)
    if write_config:
        set_server_ip(Path(write_config), ip)
        print(f"wrote server_ip: {ip} to {write_config}", file=out)
        print(f"Start the agent:\n  twistd -n fluidity-agent --config {write_config}", file=out)
    else:
        print(
            f"Start the agent:\n  twistd -n fluidity-agent --config configs/agent.yaml --server-ip {ip} --server-port "
            f"{port}",
            file=out,
        )


def _recent_events(ecs, settings: Settings, count: int = 5) -> str:
    try:
        service = ecs_state.describe_service(ecs, settings)
    except Exception:
        return ""
    return "\n".join(f"  {e.get('createdAt', '')} {e.get('message', '')}" for e in service.get("events", [])[:count])


def stop(
    settings: Settings, timeout: float, poll: float, wait: bool, out=sys.stdout, aws: AwsTarget = AwsTarget()
) -> int:
    ecs, ec2, _ = _clients(aws)
    service = _aws_call(ecs_state.describe_service, ecs, settings)
    if int(service.get("desiredCount", 0)) != 0:
        _set_desired(ecs, settings, 0, aws)
    print(f"asked ECS to stop {settings.cluster}/{settings.service} (desiredCount 0)", file=out, flush=True)
    port = _with_task_port(ecs, settings, service).container_port
    wakers = _aws_call(_waker_ingress, ec2, service, port, _session(aws).client("elbv2"))
    if wakers is not None:
        closed = _aws_call(ingress.close_all, ec2, wakers)
        print(f"closed the server's port to {closed} waker address(es)", file=out, flush=True)
    if not wait:
        return 0
    began = time.monotonic()
    while True:
        state = _aws_call(ecs_state.state, ecs, ec2, settings, with_ip=False)
        if state["status"] == "stopped":
            print(f"stopped after {round(time.monotonic() - began)}s: no task runs", file=out)
            return 0
        if time.monotonic() - began >= timeout:
            raise OperatorError(
                f"timed out after {timeout:g}s: a task is still {state['taskStatus'] or 'running'} (it stops on its "
                f"own; check again with `fluidity status`)"
            )
        time.sleep(poll)


def status(settings: Settings, as_json: bool, out=sys.stdout, aws: AwsTarget = AwsTarget()) -> int:
    ecs, ec2, cloudwatch = _clients(aws)
    settings = _with_task_port(ecs, settings, _aws_call(ecs_state.describe_service, ecs, settings))
    state = _aws_call(ecs_state.state, ecs, ec2, settings)
    now = time.time()
    try:
        agents = newest_maximum(cloudwatch, settings, ACTIVE_CONNECTIONS, now)
        activity = newest_maximum(cloudwatch, settings, LAST_ACTIVITY, now)
    except Exception as e:  # metrics are a nicety: say so, show the rest
        agents = activity = None
        state["metricsError"] = str(e).splitlines()[0]
    state["connectedAgents"] = None if agents is None else int(agents)
    state["lastActivityEpochSeconds"] = activity
    if as_json:
        print(json.dumps(state, indent=2), file=out)
        return 0
    rows = [
        ("service", f"{settings.cluster}/{settings.service}"),
        ("state", state["status"]),
        ("desired / running / pending", f"{state['desiredCount']} / {state['runningCount']} / {state['pendingCount']}"),
        (
            "task",
            (state["taskStatus"] or "-")
            + (f" since {_ago(state['taskStartedAt'], now)}" if state["taskStartedAt"] else ""),
        ),
        (
            "public address",
            f"{state['publicIp']}:{state['port']}"
            + (f" ({state['publicDnsName']})" if state.get("publicDnsName") else "")
            if state["publicIp"]
            else "-",
        ),
        (f"agents connected (last {settings.lookback_minutes:g} min)", "-" if agents is None else str(int(agents))),
        ("last activity", _ago(activity, now)),
    ]
    if "metricsError" in state:
        rows.append(("metrics", f"unavailable: {state['metricsError']}"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}", file=out)
    return 0


_SERVER_IP_LINE = re.compile(r"^(server_ip\s*:\s*)(\"[^\"]*\"|'[^']*'|[^\s#]*)(.*)$", re.MULTILINE)


def set_server_ip(path: Path, ip: str) -> None:
    """Replace the top-level `server_ip:` value in place, keeping every other line and
    comment as they are; add the key when it is missing."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise OperatorError(f"cannot read {path}: {e.strerror}") from None
    updated, count = _SERVER_IP_LINE.subn(lambda m: f"{m.group(1)}{ip}{m.group(3)}", text, count=1)
    if count == 0:
        updated = text + ("" if text.endswith("\n") or not text else "\n") + f"server_ip: {ip}\n"
    try:
        path.write_text(updated, encoding="utf-8")
    except OSError as e:
        raise OperatorError(f"cannot write {path}: {e.strerror}") from None
