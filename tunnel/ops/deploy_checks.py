"""`fluidity doctor --deploy`: what `pulumi up` needs, checked before it is run.

The first real step of a deploy fails on what is missing from the machine rather than in
the program: the Pulumi CLI and a backend to keep state in, a Docker daemon with buildx
(stock Debian Docker has none) to build the server image, AWS credentials and a region,
and the stack's three certificate secrets. One line each, with the fix; exit non-zero
when any is missing. Nothing secret is printed: a secret is only said to be set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tunnel.ops.doctor import Check

SECRETS = {"serverCert": "certs/server.pem", "serverKey": "certs/server.key", "caCert": "certs/ca.pem"}
INSTALL_PULUMI = (
    "install the Pulumi CLI (see pulumi.com/docs/install), then `pulumi login --local` (state on this machine) or "
    "`pulumi login`"
)


def _run(argv: list[str], timeout: float = 20.0, env: dict | None = None) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _first_line(done: subprocess.CompletedProcess | None) -> str:
    text = ((done.stdout or "") + (done.stderr or "")).strip() if done is not None else ""
    return text.splitlines()[0][:200] if text else "no answer"


def pulumi(checks: list[Check]) -> bool:
    found = shutil.which("pulumi")
    if not found:
        checks.append(Check("Pulumi CLI", "FAIL", "`pulumi` is not on PATH", INSTALL_PULUMI))
        return False
    version = _run([found, "version"])
    checks.append(Check("Pulumi CLI", "ok", f"{found} {_first_line(version)}"))
    who = _run([found, "whoami", "--verbose"])
    if who is None or who.returncode != 0:
        checks.append(
            Check(
                "Pulumi backend",
                "FAIL",
                f"not logged in ({_first_line(who)})",
                "`pulumi login --local` (state in ~/.pulumi) or `pulumi login`",
            )
        )
        return False
    backend = next(
        (line.split(":", 1)[1].strip() for line in who.stdout.splitlines() if line.lower().startswith("backend url")),
        "",
    )
    checks.append(
        Check(
            "Pulumi backend",
            "ok",
            f"logged in as {who.stdout.splitlines()[0].split(':', 1)[-1].strip()}"
            + (f" at {backend}" if backend else ""),
        )
    )
    return True


def docker(checks: list[Check]) -> None:
    found = shutil.which("docker")
    if not found:
        checks.append(
            Check(
                "Docker",
                "FAIL",
                "`docker` is not on PATH: `pulumi up` builds the server image with it",
                "install Docker (Debian: apt-get install docker.io docker-buildx; elsewhere Docker Desktop)",
            )
        )
        return
    daemon = _run([found, "info", "--format", "{{.ServerVersion}}"])
    if daemon is None or daemon.returncode != 0 or not daemon.stdout.strip():
        checks.append(
            Check(
                "Docker daemon",
                "FAIL",
                f"not answering ({_first_line(daemon)})",
                "start it (`sudo systemctl start docker`, or Docker Desktop), and be in the docker group",
            )
        )
    else:
        checks.append(Check("Docker daemon", "ok", f"server {daemon.stdout.strip()}"))
    buildx = _run([found, "buildx", "version"])
    if buildx is None or buildx.returncode != 0:
        checks.append(
            Check(
                "docker buildx",
                "FAIL",
                "missing: the image is built with buildx for the stack's cpuArchitecture",
                "Debian: apt-get install docker-buildx; elsewhere Docker Desktop has it",
            )
        )
    else:
        checks.append(Check("docker buildx", "ok", _first_line(buildx)))


def aws(checks: list[Check], stack_region: str | None) -> None:
    try:
        import boto3
        import botocore.exceptions
    except ImportError:
        checks.append(
            Check("AWS", "FAIL", "boto3 is not installed", "pip install boto3, or pipx inject fluidity boto3")
        )
        return
    session = boto3.session.Session()
    region = stack_region or session.region_name
    where = "the stack's aws:region" if stack_region else "AWS_REGION / the profile"
    checks.append(
        Check(
            "AWS region",
            "ok" if region else "FAIL",
            f"{region} ({where})" if region else "none: the stack names no aws:region and none is set",
            "" if region else "pulumi config set aws:region eu-west-1",
        )
    )
    if session.get_credentials() is None:
        checks.append(
            Check("AWS credentials", "FAIL", "none found", "`aws configure`, `aws sso login`, or AWS_PROFILE")
        )
        return
    try:
        identity = session.client("sts", region_name=region or "us-east-1").get_caller_identity()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
        checks.append(
            Check(
                "AWS credentials",
                "FAIL",
                f"refused: {e}",
                "refresh them (`aws sso login`, new keys) or pick another AWS_PROFILE",
            )
        )
        return
    checks.append(Check("AWS credentials", "ok", f"account {identity['Account']} as {identity['Arn']}"))


def stack_file(project: Path, name: str | None) -> Path | None:
    if name:
        return project / f"Pulumi.{name}.yaml"
    found = sorted(project.glob("Pulumi.*.yaml"))
    return found[0] if len(found) == 1 else None


def secrets(checks: list[Check], stack: Path | None, project: Path) -> str | None:
    """The three certificate secrets set (encrypted) in the stack file; its aws:region."""
    import yaml

    if stack is None:
        found = sorted(p.name for p in project.glob("Pulumi.*.yaml"))
        detail = f"several stack files ({', '.join(found)})" if found else "no Pulumi.<stack>.yaml"
        checks.append(
            Check(
                "stack secrets",
                "FAIL",
                f"{detail} in {project}",
                "pass --stack NAME" if found else "pulumi stack init NAME",
            )
        )
        return None
    try:
        data = yaml.safe_load(stack.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        checks.append(
            Check(
                "stack secrets",
                "FAIL",
                f"{stack}: cannot read it ({type(e).__name__})",
                f"pulumi stack init {stack.stem.split('.', 1)[-1]}",
            )
        )
        return None
    config = (data.get("config") or {}) if isinstance(data, dict) else {}
    if not isinstance(config, dict):
        config = {}
    for key, source in SECRETS.items():
        value = config.get(f"fluidity:{key}")
        fix = f"pulumi config set --secret {key} < {source}"
        if value is None:
            checks.append(Check(f"secret {key}", "FAIL", f"not set in {stack.name}", fix))
        elif not (isinstance(value, dict) and "secure" in value):
            checks.append(
                Check(
                    f"secret {key}",
                    "FAIL",
                    f"set in {stack.name} as plain text, not as a secret",
                    f"pulumi config rm {key}; {fix}",
                )
            )
        else:
            checks.append(Check(f"secret {key}", "ok", f"set (encrypted) in {stack.name}"))
    region = config.get("aws:region")
    return str(region) if region else None


def run(project: Path, stack_name: str | None = None) -> list[Check]:
    checks: list[Check] = []
    if not (project / "Pulumi.yaml").exists():
        checks.append(
            Check(
                "Pulumi project",
                "FAIL",
                f"no Pulumi.yaml in {project}",
                "run it in the folder with Pulumi.yaml (the checkout's top folder)",
            )
        )
    pulumi(checks)
    docker(checks)
    region = secrets(checks, stack_file(project, stack_name), project)
    aws(checks, region)
    return checks


def main(project: str | None, stack_name: str | None) -> int:
    checks = run(Path(project or os.getcwd()), stack_name)
    for check in checks:
        print(check.line(), flush=True)
    failed = [c for c in checks if c.state == "FAIL"]
    print(f"\n{len(failed)} problem(s) found before `pulumi up`." if failed else "\nready for `pulumi up`.")
    return 1 if failed else 0
