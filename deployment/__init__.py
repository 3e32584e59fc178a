"""What the deployed service is and how to read and change it, shared by the operator CLI
(`tunnel.ops`), the Lambdas (`lambdas/`), the Pulumi program (`infra/`) and the server.

Standard library and boto3 only: the Lambdas' code archive carries this folder beside
`lambdas/`, and the server image installs it.
"""
