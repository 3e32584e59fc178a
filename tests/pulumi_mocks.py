"""Run the Pulumi program under Pulumi's official mocks and keep what it registered.

No CLI, no cloud: `synthesize(config)` returns every resource with the inputs the
program gave it (secrets unwrapped), plus the stack outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime.config import set_all_config
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

ACCOUNT = "123456789012"
REGION = "eu-west-1"
CERTS = {
    "serverCert": "-----BEGIN CERTIFICATE-----\nserver\n-----END CERTIFICATE-----\n",
    "serverKey": "-----BEGIN PRIVATE KEY-----\nkey\n-----END PRIVATE KEY-----\n",
    "caCert": "-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n",
}


@dataclass
class Registered:
    type: str
    name: str
    inputs: dict
    ignore_changes: list[str] = field(default_factory=list)  # as the SDK sent it to the engine
    id: str = ""  # what the mocks answered
    state: dict = field(default_factory=dict)


@dataclass
class Stack:
    resources: list[Registered] = field(default_factory=list)
    outputs: dict = field(default_factory=dict)

    def of_type(self, type_: str) -> list[Registered]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name: str | None = None) -> Registered:
        found = [r for r in self.of_type(type_) if name is None or r.name == name]
        assert len(found) == 1, f"expected one {type_} {name or ''}, found {[r.name for r in found]}"
        return found[0]


class RecordingMocks(pulumi_mocks.Mocks):
    """Answers like AWS would for the few computed properties the program reads."""

    def __init__(self, image_digest: str = "sha256:" + "ab" * 32) -> None:
        self.resources: list[Registered] = []
        self.image_digest = image_digest  # what the registry answers for the pushed image

    def new_resource(self, args: pulumi_mocks.MockResourceArgs):
        resource_id, state = self.answer(args)
        self.resources.append(Registered(args.typ, args.name, dict(args.inputs), id=resource_id, state=state))
        return resource_id, state

    def answer(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str, dict]:
        """The id and state AWS would give this resource."""
        state = dict(args.inputs)
        kind = args.typ.split(":")[1].split("/")[0]
        resource_id = f"{args.name}-id"
        state.setdefault("arn", f"arn:aws:{kind}:{REGION}:{ACCOUNT}:{args.name}")
        if args.typ == "aws:ecr/repository:Repository":
            state["repositoryUrl"] = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{args.inputs['name']}"
        if args.typ == "aws:ecs/service:Service":
            resource_id = f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/{args.inputs.get('name')}"
        if args.typ == "aws:lb/loadBalancer:LoadBalancer":
            state["dnsName"] = f"{args.inputs['name']}-0123456789abcdef.elb.{REGION}.amazonaws.com"
            state["arn"] = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:loadbalancer/net/{args.inputs['name']}/1"
        if args.typ == "aws:lb/targetGroup:TargetGroup":
            state["arn"] = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:targetgroup/{args.inputs['name']}/2"
        if args.typ == "aws:appautoscaling/target:Target":
            state["arn"] = f"arn:aws:application-autoscaling:{REGION}:{ACCOUNT}:scalable-target/0ec2abc"
        if args.typ == "aws:ecs/cluster:Cluster":
            state["arn"] = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{args.inputs['name']}"
        if args.typ == "aws:ssm/parameter:Parameter":
            state["arn"] = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{args.inputs['name']}"
        if args.typ == "aws:cloudwatch/logGroup:LogGroup":
            state["arn"] = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{args.inputs['name']}"
        if args.typ == "aws:lambda/function:Function":
            state["invokeArn"] = (
                f"arn:aws:apigateway:{REGION}:lambda:path/2015-03-31/functions/{state['arn']}/invocations"
            )
        if args.typ == "aws:apigateway/restApi:RestApi":
            resource_id = "abc123"
            state.update(rootResourceId="root", executionArn=f"arn:aws:execute-api:{REGION}:{ACCOUNT}:abc123")
        if args.typ == "aws:apigateway/apiKey:ApiKey":
            state["value"] = "generated-api-key"
        if args.typ == "aws:ecr/repository:Repository":
            state["registryId"] = ACCOUNT
        if args.typ == "docker-build:index:Image":
            state["digest"] = self.image_digest
        return resource_id, state

    def call(self, args: pulumi_mocks.MockCallArgs):
        if args.token == "aws:index/getRegion:getRegion":
            return {"name": REGION, "region": REGION, "id": REGION}
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/me", "userId": "me", "id": ACCOUNT}
        if args.token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            return {
                "userName": "AWS",
                "password": "ecr-token",
                "authorizationToken": "QVdTOmVjci10b2tlbg==",
                "proxyEndpoint": f"https://{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com",
                "id": ACCOUNT,
            }
        if args.token == "aws:ec2/getVpc:getVpc":
            return {"id": "vpc-default", "cidrBlock": "172.31.0.0/16", "default": True}
        if args.token == "aws:ec2/getSubnets:getSubnets":
            return {"ids": ["subnet-a", "subnet-b", "subnet-c"], "id": "x", "filters": args.args.get("filters")}
        raise AssertionError(f"unexpected invoke {args.token}")


def _record_ignore_changes(mocks: RecordingMocks) -> None:
    """The mocks see inputs only; the registration request the SDK sends also carries the
    resource options the engine acts on, such as ignoreChanges: keep those too."""
    monitor = pulumi.runtime.settings.get_monitor()
    register = monitor.RegisterResource

    def recording(request):
        answer = register(request)
        for resource in reversed(mocks.resources):
            if resource.name == request.name and resource.type == request.type:
                resource.ignore_changes = list(request.ignoreChanges)
                break
        return answer

    monitor.RegisterResource = recording


def synthesize(
    config: dict | None = None,
    certs: dict | None = CERTS,
    image_digest: str = "sha256:" + "ab" * 32,
    mocks: RecordingMocks | None = None,
    region: str = REGION,
) -> Stack:
    """Run `infra.program.run()` with these `fluidity:*` settings; raise what it raises.
    `mocks`: another answerer (the cloud rehearsal's creates each resource in moto)."""
    from infra import program

    values = {f"fluidity:{k}": v for k, v in {**(certs or {}), **(config or {})}.items()}
    values["aws:region"] = region
    set_all_config(values, [f"fluidity:{k}" for k in (certs or {})])
    mocks = mocks or RecordingMocks(image_digest)
    pulumi.runtime.set_mocks(mocks, project="fluidity", stack="dev", preview=False)
    _record_ignore_changes(mocks)
    outputs: dict = {}

    def program_and_outputs():
        exported = program.run()
        return pulumi.Output.all(**exported).apply(outputs.update)

    _sync_await(run_pulumi_func(lambda: _sync_await(pulumi.Output.from_input(program_and_outputs()).future())))
    return Stack(mocks.resources, outputs)
