"""The control plane as the Pulumi program declared it, run on loopback.

`LambdaRuntime` runs each declared function the way Lambda's Python runtime would: in a
process of its own, importing its declared handler string from the files of its declared
code archive (and boto3, which the runtime provides; nothing else of this repository), with
its declared environment and its role's credentials. `ApiGateway` serves the declared REST
API: routes, methods, stage, API keys of the usage plans on that stage and the Lambda
permissions are read from the declared resources; a request none of them allows gets the
answer API Gateway gives. `Scheduler` fires a declared schedule's target with its input.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO

from moto_stack import Declared

# The Lambda Python runtime's own packages: boto3 and what it needs.
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")

BOOTSTRAP = r"""
import importlib, json, logging, sys, traceback
code, runtime, handler_name = sys.argv[1:4]
sys.path[:0] = [code, runtime]
out, sys.stdout = sys.stdout, sys.stderr  # the handler's prints go to its log, not the protocol
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
module, _, name = handler_name.rpartition(".")
try:
    handler = getattr(importlib.import_module(module), name)
except Exception:
    handler, init_error = None, traceback.format_exc()
for line in sys.stdin:
    if handler is None:
        answer = {"errorType": "Runtime.ImportModuleError", "errorMessage": init_error}
    else:
        try:
            answer = {"result": handler(json.loads(line), None)}
        except Exception as e:
            answer = {"errorType": type(e).__name__, "errorMessage": traceback.format_exc()}
    out.write(json.dumps(answer) + "\n")
    out.flush()
"""


def runtime_site(directory: Path) -> Path:
    """A folder holding only the packages Lambda's Python runtime provides."""
    import importlib

    directory.mkdir(parents=True, exist_ok=True)
    for package in RUNTIME_PACKAGES:
        module = importlib.import_module(package)
        source = Path(module.__file__)
        source = source.parent if source.name == "__init__.py" else source
        target = directory / source.name
        if not target.exists():
            target.symlink_to(source)
    return directory


def policy_allows(documents: list[dict], action: str, resource: str) -> bool:
    """Whether an Allow statement of these declared policies covers action on resource
    (no Deny statements are declared; conditions are not looked at)."""
    for document in documents:
        for statement in document["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            if (
                statement["Effect"] == "Allow"
                and any(fnmatch.fnmatchcase(action, a) for a in actions)
                and any(fnmatch.fnmatchcase(resource, r) for r in resources)
            ):
                return True
    return False


class LambdaFunction:
    """One declared function: a process, started at its first invocation (a cold start, as
    Lambda's), that then serves one invocation at a time."""

    def __init__(
        self, declared: Declared, name: str, credentials: dict, aws_env: dict, workdir: Path, runtime: Path
    ) -> None:
        self.resource = declared.function(name)
        self.name = name
        self.invocations = 0
        code = workdir / f"lambda-{name}"
        for archived, asset in self.resource.inputs["code"].assets.items():  # the declared archive, unpacked
            (code / archived).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(asset.path, code / archived)
        env = {
            "PATH": "/usr/bin:/bin",
            **self.resource.inputs["environment"]["variables"],
            "AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
            "AWS_SESSION_TOKEN": credentials["SessionToken"],
            "AWS_REGION": aws_env["AWS_REGION"],
            "AWS_DEFAULT_REGION": aws_env["AWS_REGION"],
            "AWS_ENDPOINT_URL": aws_env["AWS_ENDPOINT_URL"],
            "AWS_LAMBDA_FUNCTION_NAME": name,
        }
        self.log_path = workdir / f"lambda-{name}.log"
        self.log_path.touch()
        self._log: BinaryIO | None = None
        self._argv = [
            sys.executable,
            "-I",
            "-S",
            "-c",
            BOOTSTRAP,
            str(code),
            str(runtime),
            self.resource.inputs["handler"],
        ]
        self._env, self._code = env, code
        self.process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        # What Lambda does with the function's output: its log group, /aws/lambda/<name>,
        # written with the function's own role (a missing logs permission fails here).
        import boto3

        self._logs = boto3.session.Session(
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
            region_name=aws_env["AWS_REGION"],
        ).client("logs", endpoint_url=aws_env["AWS_ENDPOINT_URL"])
        self._shipped = 0
        self._stream: str | None = None
        self.errors: list[str] = []  # what Lambda itself could not do for this function

    def invoke(self, event: dict, timeout: float | None = None) -> dict:
        """The handler's answer; raises RuntimeError with the runtime's report when it failed."""
        timeout = timeout or float(self.resource.inputs.get("timeout", 3))
        with self._lock:
            process = self._started()
            self.invocations += 1
            process.stdin.write((json.dumps(event) + "\n").encode())
            process.stdin.flush()
            line = _read_line(process.stdout, timeout)
            try:
                self._ship_logs()
            except Exception as e:  # Lambda drops such logs silently; the rehearsal does not
                self.errors.append(f"{self.name}: writing to /aws/lambda/{self.name}: {type(e).__name__}: {e}")
        if line is None:
            raise RuntimeError(f"{self.name}: no answer within the declared timeout of {timeout:g}s")
        answer = json.loads(line)
        if "errorType" in answer:
            raise RuntimeError(f"{self.name}: {answer['errorType']}: {answer['errorMessage']}")
        return answer["result"]

    def _started(self) -> subprocess.Popen:
        if self.process is None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 (the process's, for its life)
            self.process = subprocess.Popen(
                self._argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
                env=self._env,
                cwd=self._code,
            )
        return self.process

    def _ship_logs(self) -> None:
        if self._log is None or self.process is None:
            return
        self._log.flush()
        text = self.log_path.read_bytes()[self._shipped :]
        if not text:
            return
        self._shipped += len(text)
        group = f"/aws/lambda/{self.name}"
        if self._stream is None:
            self._stream = f"rehearsal/[$LATEST]{self.process.pid}"
            self._logs.create_log_stream(logGroupName=group, logStreamName=self._stream)
        now = int(time.time() * 1000)
        lines = [line for line in text.decode(errors="replace").splitlines() if line.strip()]
        self._logs.put_log_events(
            logGroupName=group,
            logStreamName=self._stream,
            logEvents=[{"timestamp": now, "message": line} for line in lines],
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self._log is not None:
            self._log.close()


def _read_line(stream, timeout: float) -> bytes | None:
    found: list[bytes] = []
    reader = threading.Thread(target=lambda: found.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return found[0] if found and found[0] else None


class LambdaRuntime:
    """Every declared function, each with the credentials of its declared role."""

    def __init__(self, declared: Declared, role_credentials: dict[str, dict], aws_env: dict, workdir: Path) -> None:
        runtime = runtime_site(workdir / "lambda-runtime")
        self.functions = {
            f.inputs["name"]: LambdaFunction(
                declared, f.inputs["name"], role_credentials[f.inputs["role"]], aws_env, workdir, runtime
            )
            for f in declared.of_type("aws:lambda/function:Function")
        }

    def invoke(self, name: str, event: dict) -> dict:
        return self.functions[name].invoke(event)

    @property
    def errors(self) -> list[str]:
        return [e for f in self.functions.values() for e in f.errors]

    def stop(self) -> None:
        for function in self.functions.values():
            function.stop()


class Scheduler:
    """EventBridge Scheduler's part: run a declared schedule's target, if its role may."""

    def __init__(self, declared: Declared, runtime: LambdaRuntime) -> None:
        self.declared, self.runtime = declared, runtime

    def fire(self, function_name: str) -> dict:
        function = self.declared.function(function_name)
        schedules = [
            s
            for s in self.declared.of_type("aws:scheduler/schedule:Schedule")
            if s.inputs["target"]["arn"] == function.state["arn"]
        ]
        assert len(schedules) == 1, f"expected one schedule targeting {function_name}, found {len(schedules)}"
        target = schedules[0].inputs["target"]
        role = target["roleArn"].rsplit("/", 1)[-1]
        policies = list(self.declared.mocks.declared_policies.get(role, {}).values())
        if not policy_allows(policies, "lambda:InvokeFunction", target["arn"]):
            raise PermissionError(f"the scheduler role {role} may not invoke {target['arn']}")
        return self.runtime.invoke(function_name, json.loads(target["input"]))


class Route:
    def __init__(self, path: str, method: str, api_key_required: bool, function: str, source_arn: str) -> None:
        self.path, self.method, self.api_key_required, self.function, self.source_arn = (
            path,
            method,
            api_key_required,
            function,
            source_arn,
        )


class ApiGateway:
    """The declared REST API on a loopback port; `local(url)` turns an output URL into ours."""

    def __init__(self, declared: Declared, runtime: LambdaRuntime) -> None:
        self.declared, self.runtime = declared, runtime
        self.calls: list[tuple[float, str, str, int]] = []  # (time, method, path, status)
        api = declared.one("aws:apigateway/restApi:RestApi")
        self.api_id = api.id
        self.execution_arn = api.state["executionArn"]
        self.stage = declared.one("aws:apigateway/stage:Stage", restApi=api.id)
        deployment = declared.one("aws:apigateway/deployment:Deployment", restApi=api.id)
        assert self.stage.inputs["deployment"] == deployment.id, "the stage does not serve the API's deployment"
        self.routes: dict[tuple[str, str], Route] = {}
        for method in declared.of_type("aws:apigateway/method:Method"):
            if method.inputs["restApi"] != api.id:
                continue
            resource = next(
                r for r in declared.of_type("aws:apigateway/resource:Resource") if r.id == method.inputs["resourceId"]
            )
            assert resource.inputs["parentId"] == api.state["rootResourceId"], "only routes under the root are served"
            integration = declared.one(
                "aws:apigateway/integration:Integration", resourceId=resource.id, httpMethod=method.inputs["httpMethod"]
            )
            assert integration.inputs["type"] == "AWS_PROXY" and integration.inputs["integrationHttpMethod"] == "POST"
            function_arn = integration.inputs["uri"].split("/functions/", 1)[1].rsplit("/invocations", 1)[0]
            path = "/" + resource.inputs["pathPart"]
            self.routes[(method.inputs["httpMethod"], path)] = Route(
                path,
                method.inputs["httpMethod"],
                bool(method.inputs.get("apiKeyRequired")),
                declared.function_by_arn(function_arn).inputs["name"],
                f"{self.execution_arn}/{self.stage.inputs['stageName']}/{method.inputs['httpMethod']}{path}",
            )
        self.keys = self._keys_on_stage(api.id, self.stage.inputs["stageName"])
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _keys_on_stage(self, api_id: str, stage: str) -> set[str]:
        keys = set()
        for plan in self.declared.of_type("aws:apigateway/usagePlan:UsagePlan"):
            if {"apiId": api_id, "stage": stage} not in [dict(s) for s in plan.inputs.get("apiStages", [])]:
                continue
            for link in self.declared.of_type("aws:apigateway/usagePlanKey:UsagePlanKey"):
                if link.inputs["usagePlanId"] == plan.id:
                    key = next(
                        k for k in self.declared.of_type("aws:apigateway/apiKey:ApiKey") if k.id == link.inputs["keyId"]
                    )
                    if key.inputs.get("enabled", True):
                        keys.add(key.state["value"])
        return keys

    def local(self, url: str) -> str:
        """`https://<api>.execute-api.<region>.amazonaws.com/prod/wake` -> this front's address."""
        prefix = f"https://{self.api_id}.execute-api.{self.declared.mocks.region}.amazonaws.com"
        assert url.startswith(prefix + "/"), f"{url} is not this API's address"
        return self.url + url[len(prefix) :]

    def _permitted(self, route: Route) -> bool:
        for permission in self.declared.of_type("aws:lambda/permission:Permission"):
            inputs = permission.inputs
            if (
                inputs["function"] == route.function
                and inputs["action"] == "lambda:InvokeFunction"
                and inputs["principal"] == "apigateway.amazonaws.com"
                and fnmatch.fnmatchcase(route.source_arn, inputs["sourceArn"])
            ):
                return True
        return False

    def answer(self, method: str, path: str, headers: dict, body: bytes, source_ip: str) -> tuple[int, dict, bytes]:
        stage = "/" + self.stage.inputs["stageName"]
        route = self.routes.get((method, path[len(stage) :])) if path.startswith(stage + "/") else None
        if route is None:
            return 403, {}, json.dumps({"message": "Missing Authentication Token"}).encode()
        key = next((v for k, v in headers.items() if k.lower() == "x-api-key"), None)
        if route.api_key_required and key not in self.keys:
            return 403, {}, json.dumps({"message": "Forbidden"}).encode()
        if not self._permitted(route):  # API Gateway may not invoke the function
            return 500, {}, json.dumps({"message": "Internal server error"}).encode()
        event = {
            "resource": route.path,
            "path": route.path,
            "httpMethod": method,
            "headers": headers,
            "queryStringParameters": None,
            "body": body.decode() if body else None,
            "isBase64Encoded": False,
            "requestContext": {
                "resourcePath": route.path,
                "httpMethod": method,
                "stage": self.stage.inputs["stageName"],
                "apiId": self.api_id,
                "identity": {"sourceIp": source_ip, "apiKey": key},
            },
        }
        try:
            result = self.runtime.invoke(route.function, event)
        except RuntimeError as e:
            print(f"api gateway: {e}", file=sys.stderr)
            return 502, {}, json.dumps({"message": "Internal server error"}).encode()
        return int(result["statusCode"]), result.get("headers") or {}, (result.get("body") or "").encode()

    def _handler(self):
        gateway = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, payload = gateway.answer(
                    self.command, self.path, dict(self.headers.items()), body, self.client_address[0]
                )
                gateway.calls.append((time.monotonic(), self.command, self.path, status))
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
