"""The control plane's Lambda handlers (wake, status, kill, sleep); boto3 only.

Deployed as this folder, so handlers are `lambdas.wake.handler` and so on. The same
handlers back `fluidity control-plane`, the local stand-in for API Gateway.
"""
