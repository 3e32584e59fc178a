"""`fluidity doctor --deploy` (issue 26, item 6), run as a user runs it before `pulumi up`:
the real command in a project folder of the test's own, AWS through moto's server, the
machine's own docker CLI where it has one (pointed at a daemon that is not there)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support import FLUIDITY

pytestmark = pytest.mark.processes  # real processes (twistd, curl, openssl, namespaces...)

ROOT = Path(__file__).resolve().parent.parent
SECURE = {"secure": "v1:c2VjcmV0:ZW5jcnlwdGVk"}  # what `pulumi config set --secret` writes


def project(tmp_path: Path, secrets: dict, region: str | None = "eu-west-1") -> Path:
    import yaml

    folder = tmp_path / "project"
    folder.mkdir(exist_ok=True)
    shutil.copy(ROOT / "Pulumi.yaml", folder / "Pulumi.yaml")
    config = {f"fluidity:{k}": v for k, v in secrets.items()}
    if region:
        config["aws:region"] = region
    (folder / "Pulumi.mine.yaml").write_text(yaml.safe_dump({"config": config}))
    return folder


def doctor(folder: Path, env: dict, *extra: str) -> tuple[int, dict[str, str]]:
    done = subprocess.run(
        [FLUIDITY, "doctor", "--deploy", *extra], cwd=folder, capture_output=True, text=True, timeout=120, env=env
    )
    assert "Traceback" not in done.stdout + done.stderr, done
    lines = {}
    for line in done.stdout.splitlines():
        if line[:4].strip() in ("ok", "warn", "FAIL") and ": " in line:
            lines[line[6:].split(": ", 1)[0]] = line
    return done.returncode, lines


def bare_env(tmp_path: Path, **extra: str) -> dict:
    """No pulumi and no docker on PATH, no AWS credentials anywhere."""
    empty = tmp_path / "bin"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {
        **env,
        "PATH": str(empty),
        "HOME": str(tmp_path / "home"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        **extra,
    }


def test_a_bare_machine_gets_one_line_per_missing_piece_with_its_fix(tmp_path):
    code, lines = doctor(project(tmp_path, {"serverCert": SECURE}), bare_env(tmp_path))
    assert code == 1
    assert "FAIL" in lines["Pulumi CLI"] and "pulumi login --local" in lines["Pulumi CLI"], lines
    assert "FAIL" in lines["Docker"] and "docker-buildx" in lines["Docker"], lines
    assert lines["secret serverCert"].startswith("ok") and "encrypted" in lines["secret serverCert"], lines
    assert (
        "FAIL" in lines["secret caCert"]
        and "pulumi config set --secret caCert < certs/ca.pem" in lines["secret caCert"]
    ), lines
    assert "FAIL" in lines["AWS credentials"] and "aws configure" in lines["AWS credentials"], lines
    assert lines["AWS region"].startswith("ok") and "eu-west-1" in lines["AWS region"], lines
    assert "v1:c2VjcmV0" not in str(lines)  # nothing secret is shown


def test_a_secret_in_plain_text_is_called_out(tmp_path):
    code, lines = doctor(
        project(tmp_path, {"serverCert": SECURE, "serverKey": "-----BEGIN PRIVATE KEY-----", "caCert": SECURE}),
        bare_env(tmp_path),
    )
    assert (
        code == 1
        and "as plain text, not as a secret" in lines["secret serverKey"]
        and "pulumi config rm serverKey" in lines["secret serverKey"]
    ), lines
    assert "BEGIN PRIVATE KEY" not in str(lines)


def test_aws_credentials_are_tried_for_real(tmp_path, aws):
    env = bare_env(tmp_path, **aws.env)
    code, lines = doctor(project(tmp_path, dict.fromkeys(("serverCert", "serverKey", "caCert"), SECURE)), env)
    assert lines["AWS credentials"].startswith("ok") and "account 123456789012" in lines["AWS credentials"], lines
    for key in ("serverCert", "serverKey", "caCert"):
        assert lines[f"secret {key}"].startswith("ok"), lines
    assert code == 1  # pulumi and docker are still missing


def test_a_docker_without_its_daemon(tmp_path):
    docker = shutil.which("docker")
    assert docker, "docker's CLI is needed (.ci/run installs docker.io)"
    link = tmp_path / "bin"
    link.mkdir()
    (link / "docker").symlink_to(docker)
    env = bare_env(tmp_path, DOCKER_HOST=f"unix://{tmp_path}/no-daemon.sock")
    code, lines = doctor(project(tmp_path, {}), env)
    assert (
        code == 1
        and "FAIL" in lines["Docker daemon"]
        and "not answering" in lines["Docker daemon"]
        and "start it" in lines["Docker daemon"]
    ), lines


@pytest.mark.parametrize(
    "layout, says",
    [("none", "no Pulumi.yaml in"), ("two stacks", "several stack files (Pulumi.a.yaml, Pulumi.b.yaml)")],
)
def test_the_wrong_folder_is_said(tmp_path, layout, says):
    folder = tmp_path / "somewhere"
    folder.mkdir()
    if layout == "two stacks":
        shutil.copy(ROOT / "Pulumi.yaml", folder / "Pulumi.yaml")
        for name in ("a", "b"):
            (folder / f"Pulumi.{name}.yaml").write_text("config: {}\n")
    code, lines = doctor(folder, bare_env(tmp_path))
    assert code == 1 and says in "\n".join(lines.values()), lines
    if layout == "two stacks":
        code, lines = doctor(folder, bare_env(tmp_path), "--stack", "a")
        assert "not set in Pulumi.a.yaml" in lines["secret caCert"], lines
