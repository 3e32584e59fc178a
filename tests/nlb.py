"""The stack's Network Load Balancer in the cloud rehearsal: a real HAProxy in TCP mode.

It is configured only from what moto holds of the declared load balancer: the listener's
port and the target group's registered targets and health check (TCP, its interval and
thresholds). ECS's part (tests/fargate.py) registers and deregisters the tasks; this
follows, reloading HAProxy softly (`-sf`), so connections already open to a target
that left carry on until they end, as an NLB's do during a deregistration delay. The
balancer's DNS name resolves to its address for the processes given `hosts_file()`
(a private /etc/hosts bound over the system's in a mount namespace of their own): the
system's own resolver is never touched.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

HAPROXY = "haproxy"


class LoadBalancer:
    def __init__(self, aws, declared, workdir: Path, events, address: str = "127.0.0.1") -> None:
        self.aws, self.workdir, self.events, self.address = aws, workdir, events, address
        elbv2 = aws.client("elbv2")
        balancer = elbv2.describe_load_balancers()["LoadBalancers"][0]
        self.dns_name = balancer["DNSName"]
        listener = elbv2.describe_listeners(LoadBalancerArn=balancer["LoadBalancerArn"])["Listeners"][0]
        assert listener["Protocol"] == "TCP", "the rehearsal's balancer passes TCP through"
        self.port = listener["Port"]
        self.target_group = listener["DefaultActions"][0]["TargetGroupArn"]
        group = elbv2.describe_target_groups(TargetGroupArns=[self.target_group])["TargetGroups"][0]
        assert group["HealthCheckProtocol"] == "TCP"
        self.check = (
            group["HealthCheckIntervalSeconds"],
            group["HealthyThresholdCount"],
            group["UnhealthyThresholdCount"],
        )
        self.config = workdir / "haproxy.cfg"
        self.pidfile = workdir / "haproxy.pid"
        self.targets: tuple[tuple[str, int], ...] | None = None
        self.reloads = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._follow()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def hosts_file(self) -> Path:
        """/etc/hosts for a process that resolves the balancer's name, as DNS would."""
        path = self.workdir / "hosts"
        path.write_text(f"127.0.0.1 localhost\n{self.address} {self.dns_name}\n")
        return path

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self._follow()
            except Exception as e:  # recorded: the rehearsal fails on it
                self.errors.append(f"{type(e).__name__}: {e}")

    def _follow(self) -> None:
        described = self.aws.client("elbv2").describe_target_health(TargetGroupArn=self.target_group)
        targets = tuple(
            sorted(
                (d["Target"]["Id"], int(d["Target"]["Port"]))
                for d in described["TargetHealthDescriptions"]
                if d.get("TargetHealth", {}).get("State") != "draining"
            )
        )
        if targets == self.targets:
            return
        self.targets = targets
        interval, rise, fall = self.check
        servers = "".join(
            f"    server task{i} {host}:{port} check inter {interval}s rise {rise} fall {fall}\n"
            for i, (host, port) in enumerate(targets)
        )
        self.config.write_text(
            "global\n    maxconn 4096\n\n"
            "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\n"
            f"frontend listener\n    bind {self.address}:{self.port}\n    default_backend targets\n\n"
            f"backend targets\n{servers}"
        )
        command = [HAPROXY, "-D", "-p", str(self.pidfile), "-f", str(self.config)]
        if self.pidfile.exists() and self.pidfile.read_text().split():
            command += ["-sf", *self.pidfile.read_text().split()]  # old connections finish on the old process
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"haproxy: {done.stderr}"
        self.reloads += 1
        self.events("load balancer follows its targets", ", ".join(f"{h}:{p}" for h, p in targets) or "none")

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        if self.pidfile.exists():
            for pid in self.pidfile.read_text().split():
                subprocess.run(["kill", pid], capture_output=True)
