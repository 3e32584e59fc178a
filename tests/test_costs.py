"""`fluidity cost`: two worked examples recomputed by hand from the rates, and the command
as a user runs it on a stack file."""

from __future__ import annotations

import json
import subprocess

import pytest
from support import FLUIDITY

from tunnel.ops import costs, rates


def by_item(lines, start: str):
    return next(line for line in lines if line.item.startswith(start))


def estimate_for(values: dict, usage: costs.Usage):
    from deployment.stack_settings import from_config

    return costs.estimate(from_config(costs._Config(values)), usage, "us-east-1")


def test_worked_example_defaults_forty_hours_one_agent():
    est = estimate_for({"capacity": "FARGATE"}, costs.Usage(hours_per_month=40, agents=1))
    fargate = by_item(est.running, "Fargate")
    assert fargate.low == fargate.high == round(40 * (0.25 * 0.04048 + 0.5 * 0.004445), 4) == 0.4937
    assert by_item(est.running, "public IPv4").high == 0.20
    metrics = by_item(est.running, "CloudWatch custom metrics")
    assert metrics.high == round(3 * 0.30 * 40 / 730, 4) and metrics.free == 0  # three series, 40 of 730 hours
    assert not [line for line in est.running if "PutMetricData" in line.item]  # EMF lines: no API requests
    ecr = by_item(est.stopped, "ECR")
    assert ecr.high == round(costs.IMAGE_MB / 1024 * 2 * 0.10, 4)  # the lifecycle rule keeps two images
    assert by_item(est.stopped, "monitoring: 1 alarm reading 2 metrics").high == 0.20  # $0.10 a metric
    assert not [line for line in est.stopped if line.item.startswith("dashboard")]  # opt-in
    assert by_item(estimate_for({"dashboard": "true"}, costs.Usage()).stopped, "dashboard").high == 3.00


def test_worked_example_arm64_spot_hundred_hours_three_agents():
    est = estimate_for(
        {"cpuArchitecture": "ARM64", "capacity": "FARGATE_SPOT", "cpu": "512", "memory": "1024"},
        costs.Usage(hours_per_month=100, agents=3, per_agent_series=True),
    )
    fargate = by_item(est.running, "Fargate")
    on_demand = 100 * (0.5 * 0.03238 + 1.0 * 0.00356)  # 1.975
    assert (fargate.low, fargate.high) == (round(on_demand * 0.30, 4), round(on_demand * 0.50, 4))  # 50-70% off
    assert by_item(est.running, "public IPv4").high == 0.50
    assert by_item(est.running, "CloudWatch custom metrics").high == round(6 * 0.30 * 100 / 730, 4)  # 3 + one per agent


@pytest.mark.processes
def test_the_targets_and_the_settings_that_reach_them(tmp_path):
    """40 hours a month, one agent: at most $0.40 a month all in and $0.02 while stopped
    (after the free tiers) with ARM64 on Spot; the defaults cost more."""
    cheap = tmp_path / "Pulumi.cheap.yaml"
    cheap.write_text(
        "config:\n  aws:region: us-east-1\n  fluidity:cpuArchitecture: ARM64\n  fluidity:capacity: FARGATE_SPOT\n"
    )
    done = subprocess.run(
        [FLUIDITY, "cost", "--stack", str(cheap), "--json"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["month_total"]["free"] <= 0.40 and figures["stopped_total"]["free"] <= 0.02, figures
    assert figures["rates_taken"] == rates.TAKEN and figures["region"] == rates.REGION
    defaults = tmp_path / "Pulumi.defaults.yaml"
    defaults.write_text("config:\n  aws:region: us-east-1\n")
    dearer = json.loads(
        subprocess.run(
            [FLUIDITY, "cost", "--stack", str(defaults), "--json"], capture_output=True, text=True, timeout=60
        ).stdout
    )
    assert dearer["month_total"]["free"] > 0.40  # x86 on demand: the defaults the seed had


@pytest.mark.processes
def test_the_table_a_person_reads(tmp_path):
    stack = tmp_path / "Pulumi.dev.yaml"
    stack.write_text("config:\n  aws:region: eu-west-1\n")
    done = subprocess.run(
        [FLUIDITY, "cost", "--stack", str(stack), "--hours-per-month", "10"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "for 10 hours a month" in text and "While it runs:" in text and "Always (also while stopped):" in text
    assert "after free tier" in text and "public IPv4" in text and "A month:" in text
    assert "rates are us-east-1's" in text  # another region is said, not hidden


@pytest.mark.processes
@pytest.mark.parametrize(
    "content, message",
    [
        ("config:\n  fluidity:cpu: '300'\n", "fluidity:cpu must be one of"),
        ("config: [1, 2]\n", "'config' must be a mapping"),
        ("config: {\n", "not valid YAML"),
    ],
)
def test_a_bad_stack_file_is_one_line(tmp_path, content, message):
    stack = tmp_path / "Pulumi.bad.yaml"
    stack.write_text(content)
    done = subprocess.run([FLUIDITY, "cost", "--stack", str(stack)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.processes
def test_a_missing_stack_file_and_bad_flags(tmp_path):
    done = subprocess.run(
        [FLUIDITY, "cost", "--stack", str(tmp_path / "nope.yaml")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "cannot read" in done.stderr
    done = subprocess.run([FLUIDITY, "cost", "--hours-per-month", "-3"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--hours-per-month" in done.stderr


def test_a_stopped_stack_costs_at_most_fifty_cents_at_list_price_with_monitoring():
    """Issue 43: $3.94 a month stopped (nine alarms and a dashboard) became the alarm's two
    metrics, the ECR images and the schedule's runs; without monitoring only the last two."""
    with_monitoring = estimate_for({}, costs.Usage())
    without = estimate_for({"monitoring": "false"}, costs.Usage())
    assert with_monitoring.total(with_monitoring.stopped, "high") <= 0.50
    dropped = with_monitoring.total(with_monitoring.stopped, "high") - without.total(without.stopped, "high")
    assert round(dropped, 2) == 0.20  # the one alarm
    assert not [line for line in without.stopped if line.item.startswith(("monitoring", "dashboard"))]
    assert without.total(without.stopped, "high") <= 0.05 and without.total(without.stopped, "free") == 0.0


@pytest.mark.processes
def test_a_reader_that_stops_early_is_no_error(tmp_path):
    """`fluidity cost --json | head -c 20` (issue 26, item 7): no BrokenPipeError traceback."""
    stack = tmp_path / "Pulumi.mine.yaml"
    stack.write_text("config:\n  aws:region: eu-west-1\n")
    done = subprocess.run(
        f"'{FLUIDITY}' cost --stack '{stack}' --json | head -c 20",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert len(done.stdout) == 20
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


@pytest.mark.processes
def test_outside_the_repository_it_prices_the_defaults_and_says_so(tmp_path):
    """No Pulumi.<stack>.yaml where it runs (an installed `fluidity`, any folder)."""
    done = subprocess.run([FLUIDITY, "cost"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (
        "A month:" in done.stdout
        and "prices the stack's defaults" in done.stdout
        and "Pulumi.dev.yaml" not in done.stderr
    ), done


@pytest.mark.processes
def test_several_stack_files_ask_which(tmp_path):
    for name in ("dev", "prod"):
        (tmp_path / f"Pulumi.{name}.yaml").write_text("config: {}\n")
    done = subprocess.run([FLUIDITY, "cost"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert (
        done.returncode == 2
        and "several stack files here (Pulumi.dev.yaml, Pulumi.prod.yaml): pass --stack" in done.stderr
    ), done


@pytest.mark.processes
@pytest.mark.parametrize(
    "region, code, says",
    [
        ("ap-south-1", 0, "the rates are us-east-1's"),
        ("mars-1", 1, "--region 'mars-1' is not an AWS region name"),
    ],
)
def test_a_region_is_priced_or_said_to_be_not(tmp_path, region, code, says):
    done = subprocess.run(
        [FLUIDITY, "cost", "--region", region], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == code and says in done.stdout + done.stderr, done
    if code == 0:
        assert region in done.stdout


def test_the_load_balancer_is_priced_in_the_stopped_month_and_extra_tasks_as_a_range():
    """Issue 29: an NLB is billed every hour it exists, tasks stopped or not; maxTasks 3
    makes the running lines a range from one task to three."""
    est = estimate_for(
        {
            "stableEndpoint": "nlb",
            "maxTasks": "3",
            "vpcId": "vpc-1",
            "publicSubnets": "subnet-1,subnet-2",
            "capacity": "FARGATE",
        },
        costs.Usage(hours_per_month=40),
    )
    balancer = by_item(est.stopped, "Network Load Balancer")
    assert balancer.low == balancer.high == balancer.free == round(730 * 0.0225, 4)  # no free tier
    assert by_item(est.stopped, "the load balancer's public IPv4 addresses: 2").high == round(730 * 2 * 0.005, 4)
    assert by_item(est.running, "load balancer capacity").high == round(40 * 0.006, 4)
    one_task = 40 * (0.25 * 0.04048 + 0.5 * 0.004445)
    fargate = by_item(est.running, "Fargate")
    assert (fargate.low, fargate.high) == (round(one_task, 4), round(3 * one_task, 4))
    assert by_item(est.running, "public IPv4 address of each running task").high == round(3 * 40 * 0.005, 4)
    assert any("even while the server is stopped" in w for w in est.warnings)
    stopped = est.as_dict()["stopped_total"]["free"]
    assert stopped >= 730 * (0.0225 + 2 * 0.005)  # the stopped month carries the load balancer
    plain = estimate_for({}, costs.Usage(hours_per_month=40))
    assert not [line for line in plain.stopped + plain.running if "oad balancer" in line.item]


@pytest.mark.processes
def test_the_stopped_line_says_the_load_balancer_is_in_it(tmp_path):
    stack = tmp_path / "Pulumi.dev.yaml"
    stack.write_text(
        "config:\n  fluidity:stableEndpoint: nlb\n"
        "  fluidity:publicSubnets: subnet-1,subnet-2\n  fluidity:vpcId: vpc-1\n"
    )
    done = subprocess.run([FLUIDITY, "cost", "--stack", str(stack)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    balancer = round(730 * (0.0225 + 2 * 0.005), 2)  # the balancer and its two addresses
    assert f"of which the load balancer ${balancer:.2f} (billed while stopped)" in done.stdout, done.stdout


@pytest.mark.processes
@pytest.mark.parametrize("gb, listed, after_free", [(0, None, None), (60, 5.40, 0.0), (150, 13.50, 4.50)])
def test_data_transfer_out_is_priced_past_the_accounts_free_hundred_gb(tmp_path, gb, listed, after_free):
    """Issue 43: every byte a user downloads through the tunnel leaves AWS from the task."""
    stack = tmp_path / "Pulumi.dev.yaml"
    stack.write_text("config:\n  aws:region: us-east-1\n")
    done = subprocess.run(
        [FLUIDITY, "cost", "--stack", str(stack), "--gb-per-month", str(gb), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in json.loads(done.stdout)["running"] if line["item"].startswith("data transfer out")]
    if listed is None:
        assert lines == []
    else:
        assert [(line["high"], line["free"]) for line in lines] == [(listed, after_free)]
        assert rates.DATA_TRANSFER_OUT_GB == 0.09 and rates.DATA_TRANSFER_FREE_GB == 100
        assert "data transfer out" in rates.SOURCES


@pytest.mark.processes
@pytest.mark.parametrize("value", ["-1", "nan", "2e6"])
def test_a_bad_gb_per_month_is_refused(value):
    done = subprocess.run([FLUIDITY, "cost", "--gb-per-month", value], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--gb-per-month in 0-1000000" in done.stderr, done.stderr


@pytest.mark.processes
def test_the_month_so_far_against_the_budget_from_moto(aws, tmp_path):
    """`fluidity cost --month`: invented usage in moto's CloudWatch, weighed as the control
    plane weighs it, against monthlyBudget; crossing it says what happens."""
    import os
    import time

    from test_lambdas import put_usage, this_months_minutes

    from deployment.budget import GB

    now = time.time()
    minutes = this_months_minutes(now, 180) or [now]
    put_usage(aws, minutes, sent=2 * GB)
    stack = tmp_path / "Pulumi.dev.yaml"
    env = {**os.environ, **aws.env}

    def month(budget: str) -> subprocess.CompletedProcess:
        stack.write_text(f"config:\n  aws:region: us-east-1\n  fluidity:monthlyBudget: '{budget}'\n")
        return subprocess.run(
            [FLUIDITY, "cost", "--month", "--stack", str(stack)], capture_output=True, text=True, timeout=60, env=env
        )

    under = month("100")
    assert under.returncode == 0, under.stderr
    hours = round(len(minutes) / 60, 2)
    assert f"{hours:g} task-hours" in under.stdout and "2 GB" in under.stdout and "Budget $100.00:" in under.stdout
    from deployment.stack_settings import from_config

    prices = costs.budget_prices(from_config(costs._Config({})))
    total = round(len(minutes) / 60 * prices["task_hour"] + 2 * 0.09 + prices["fixed"], 2)
    assert [line.split()[-1] for line in under.stdout.splitlines() if line.strip().startswith("total")] == [
        f"${total:,.2f}"
    ], under.stdout
    over = month(f"{max(0.01, total - 0.05):.2f}")
    assert over.returncode == 0 and "is spent: wake refuses and sleep stops the server until" in over.stdout
    stack.write_text("config:\n  aws:region: us-east-1\n")
    done = subprocess.run(
        [FLUIDITY, "cost", "--month", "--stack", str(stack), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    figures = json.loads(done.stdout)
    assert figures["budget"] is None and figures["cost"] == total and figures["spent"] is False


@pytest.mark.processes
def test_the_month_without_aws_credentials_is_one_line(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"))
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    done = subprocess.run(
        [FLUIDITY, "cost", "--month"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "no AWS region" in done.stderr or "no AWS credentials" in done.stderr


def test_the_sample_stacks_figures_for_issue_43():
    """Pulumi.dev.yaml, 40 hours, one agent, at list price: stopped at most $0.50 with the
    alarm; running at most $0.45 at Spot's usual 70% off (the public IPv4 address
    included); Spot is the default and ARM64 cheaper still."""
    from pathlib import Path

    from deployment.stack_settings import from_config

    values, region = costs.read_stack(Path(__file__).resolve().parent.parent / "Pulumi.dev.yaml")
    sample = costs.estimate(from_config(costs._Config(values)), costs.Usage(hours_per_month=40), region)
    assert from_config(costs._Config({})).capacity == "FARGATE_SPOT" and values["capacity"] == "FARGATE_SPOT"
    assert sample.total(sample.stopped, "high") <= 0.50
    assert sample.total(sample.running, "low") <= 0.45 < sample.total(sample.running, "high")  # a range, said so
    assert by_item(sample.running, "public IPv4").high == 0.20
    arm = costs.estimate(
        from_config(costs._Config({**values, "cpuArchitecture": "ARM64"})), costs.Usage(hours_per_month=40), region
    )
    on_demand = costs.estimate(
        from_config(costs._Config({**values, "capacity": "FARGATE"})), costs.Usage(hours_per_month=40), region
    )
    assert (
        arm.total(arm.running, "high")
        < sample.total(sample.running, "high")
        < on_demand.total(on_demand.running, "low")
    )
