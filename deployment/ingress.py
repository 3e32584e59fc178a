"""The server's port, open only to the agents that woke it.

A scanner that finds the port cannot do anything without a client certificate, but it
should not find it at all. The wake endpoint adds the caller's address (as API Gateway
saw it) as a /32 rule on the server's security group, labelled with the time; stopping
the service removes every such rule; rules older than the TTL are pruned, and their
number stays under the security group's quota (60 inbound rules by default) by dropping
the oldest. Rules not labelled by Fluidity are never touched.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

INGRESS_TAG = "fluidity:ingress"  # on the security group: "wakers" (managed here) or "cidr" (fixed by the stack)
LABEL = "fluidity waker"  # followed by the UTC time the address last woke or was allowed
_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class IngressSettings:
    group_id: str  # the server's security group; "" when the stack names a fixed CIDR instead
    port: int
    max_rules: int = 50
    ttl_hours: float = 24.0


@dataclass(frozen=True)
class Rule:
    cidr: str
    stamp: float  # epoch seconds from the label


def source_ipv4(event: dict) -> str | None:
    """The caller's IPv4 address as API Gateway saw it (REST v1 or HTTP API v2 events)."""
    context = event.get("requestContext") if isinstance(event, dict) else None
    if not isinstance(context, dict):
        return None
    identity = context.get("identity")
    http = context.get("http")
    identity = identity if isinstance(identity, dict) else {}
    http = http if isinstance(http, dict) else {}
    for candidate in (identity.get("sourceIp"), http.get("sourceIp")):
        try:
            address = ipaddress.ip_address(str(candidate))
        except ValueError:
            continue
        if address.version == 4 and not address.is_unspecified:
            return str(address)
    return None


def label(now: float) -> str:
    return f"{LABEL} {datetime.datetime.fromtimestamp(now, datetime.UTC).strftime(_FORMAT)}"


def _stamp(description: str) -> float | None:
    if not description.startswith(LABEL + " "):
        return None
    try:
        moment = datetime.datetime.strptime(description[len(LABEL) + 1 :], _FORMAT)
    except ValueError:
        return 0.0  # ours, but unreadable: the oldest of all
    return moment.replace(tzinfo=datetime.UTC).timestamp()


def waker_rules(ec2, settings: IngressSettings) -> list[Rule]:
    """Fluidity's rules on the server port, oldest first."""
    groups = ec2.describe_security_groups(GroupIds=[settings.group_id]).get("SecurityGroups", [])
    rules = []
    for group in groups:
        for permission in group.get("IpPermissions", []):
            if (
                permission.get("IpProtocol") != "tcp"
                or permission.get("FromPort") != settings.port
                or permission.get("ToPort") != settings.port
            ):
                continue
            for entry in permission.get("IpRanges", []):
                stamp = _stamp(entry.get("Description") or "")
                if stamp is not None:
                    rules.append(Rule(entry["CidrIp"], stamp))
    return sorted(rules, key=lambda r: r.stamp)


def _permission(settings: IngressSettings, cidr: str, description: str | None = None) -> list[dict]:
    ip_range = {"CidrIp": cidr} | ({"Description": description} if description else {})
    return [{"IpProtocol": "tcp", "FromPort": settings.port, "ToPort": settings.port, "IpRanges": [ip_range]}]


def revoke(ec2, settings: IngressSettings, rules: list[Rule]) -> None:
    for rule in rules:
        try:
            ec2.revoke_security_group_ingress(GroupId=settings.group_id, IpPermissions=_permission(settings, rule.cidr))
        except Exception as e:  # already gone: nothing to do
            if "NotFound" not in type(e).__name__ and "InvalidPermission.NotFound" not in str(e):
                raise


def allow(ec2, settings: IngressSettings, ip: str, now: float) -> dict:
    """Open the port to `ip`/32 (or refresh its label), after pruning stale rules and
    making room under `max_rules`. Returns what changed, for the answer and the log."""
    cidr = f"{ipaddress.IPv4Address(ip)}/32"
    rules = waker_rules(ec2, settings)
    stale = [r for r in rules if now - r.stamp > settings.ttl_hours * 3600 and r.cidr != cidr]
    others = [r for r in rules if r not in stale and r.cidr != cidr]
    crowded = others[: max(0, len(others) - (settings.max_rules - 1))]
    revoke(ec2, settings, stale + crowded)
    if any(r.cidr == cidr for r in rules):
        ec2.update_security_group_rule_descriptions_ingress(
            GroupId=settings.group_id, IpPermissions=_permission(settings, cidr, label(now))
        )
    else:
        ec2.authorize_security_group_ingress(
            GroupId=settings.group_id, IpPermissions=_permission(settings, cidr, label(now))
        )
    return {"allowed": cidr, "pruned": len(stale) + len(crowded)}


def close_all(ec2, settings: IngressSettings) -> int:
    """The service stopped: nobody needs the port. Returns how many rules went."""
    rules = waker_rules(ec2, settings)
    revoke(ec2, settings, rules)
    return len(rules)
