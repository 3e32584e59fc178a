"""AWS list prices the cost estimate uses: one table, with the date and region it was
taken for. Prices change and differ by region; `fluidity cost` says which table it used.

Figures are USD, us-east-1, on-demand list prices as published on the services' pricing
pages (taken 2026-11-27). Free tiers are named so the estimate can show the figure with
and without them.
"""

from __future__ import annotations

TAKEN = "2026-11-27"
REGION = "us-east-1"
HOURS_PER_MONTH = 730

FARGATE = {  # per vCPU-hour, per GB-hour
    "X86_64": {"vcpu_hour": 0.04048, "gb_hour": 0.004445},
    "ARM64": {"vcpu_hour": 0.03238, "gb_hour": 0.00356},
}
# Fargate Spot is priced by the market: AWS quotes "up to 70% off"; seen 50-70% off.
SPOT_DISCOUNT = (0.50, 0.70)

PUBLIC_IPV4_HOUR = 0.005  # every public IPv4 address, while attached
CUSTOM_METRIC_MONTH = 0.30  # per metric series (first 10,000), prorated by the hour it is published
CLOUDWATCH_API_PER_1000 = 0.01  # PutMetricData, GetMetricStatistics
ALARM_MONTH = 0.10  # per alarm metric, standard resolution: a metric-math alarm pays for each metric it reads
DASHBOARD_MONTH = 3.00
LOGS_INGEST_GB = 0.50
LOGS_STORE_GB_MONTH = 0.03
ECR_STORE_GB_MONTH = 0.10
LAMBDA_PER_MILLION = 0.20
LAMBDA_GB_SECOND = 0.0000166667
API_GATEWAY_REST_PER_MILLION = 3.50
SCHEDULER_PER_MILLION = 1.00
NLB_HOUR = 0.0225  # a Network Load Balancer, every hour it exists
NLCU_HOUR = 0.006  # per NLCU-hour: the largest of 800 new TCP flows/s, 100,000 active flows, 1 GB processed an hour
DATA_TRANSFER_OUT_GB = 0.09  # to the internet, the first 10 TB a month (what the task sends agents and sites)
DATA_TRANSFER_FREE_GB = 100  # a month, for the whole account (all services and regions together), permanent

SOURCES = {  # where each figure above was read (the date is TAKEN)
    "Fargate, Fargate Spot": "https://aws.amazon.com/fargate/pricing/",
    "public IPv4": "https://aws.amazon.com/vpc/pricing/ (Public IPv4 Address tab)",
    "CloudWatch (metrics, alarms, dashboards, logs, API)": "https://aws.amazon.com/cloudwatch/pricing/",
    "ECR": "https://aws.amazon.com/ecr/pricing/",
    "Lambda": "https://aws.amazon.com/lambda/pricing/",
    "API Gateway": "https://aws.amazon.com/api-gateway/pricing/",
    "EventBridge Scheduler": "https://aws.amazon.com/eventbridge/pricing/",
    "Network Load Balancer": "https://aws.amazon.com/elasticloadbalancing/pricing/",
    "data transfer out": "https://aws.amazon.com/ec2/pricing/on-demand/ (Data Transfer), 100 GB free a month since "
    "2021-12 (https://aws.amazon.com/free/, 'Always free')",
}

FREE_TIER = {  # per month; "12 months" ones only for a new account's first year
    "custom metrics": "10 metric series",
    "CloudWatch API requests": "1,000,000 requests",
    "alarms": "10 alarm metrics",
    "dashboards": "3 dashboards",
    "log ingestion": "5 GB (with storage)",
    "ECR storage": "500 MB (12 months)",
    "Lambda": "1,000,000 requests and 400,000 GB-seconds",
    "API Gateway": "1,000,000 REST calls (12 months)",
    "EventBridge Scheduler": "14,000,000 invocations",
    "SSM parameters": "standard parameters and standard throughput are free",
    "data transfer out": "100 GB to the internet, for the whole account",
}
