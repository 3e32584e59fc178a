# The Fluidity server image: `twistd -n fluidity-server`, non-root, JSON logs to stdout.
#
#   docker build -t fluidity-server .                                    # from PyPI and python:3.11-slim
#   docker build --build-arg BASE_IMAGE=fluidity-base:bookworm -t ... .  # a locally made base (scripts/container-test)
# With wheels in ./wheels (scripts/container-test makes them from requirements.lock) the
# build installs only from there.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY tunnel ./tunnel
COPY lambdas ./lambdas
COPY infra ./infra
COPY twisted ./twisted
COPY wheels ./wheels
# Dependencies exactly as locked, hashes checked (scripts/lock); then Fluidity without deps.
# Left out: pip, setuptools and the libraries' own test suites (the server never imports
# them). Bytecode is compiled once here (hash-checked, so copied timestamps do not matter)
# rather than at every start on a quarter of a vCPU.
RUN python3 -m venv /opt/fluidity \
 && if ls wheels/*.whl >/dev/null 2>&1; then \
      /opt/fluidity/bin/pip install --no-cache-dir --no-index --find-links wheels --require-hashes -r requirements.lock \
      && /opt/fluidity/bin/pip install --no-cache-dir --no-index --find-links wheels --no-deps fluidity; \
    else \
      /opt/fluidity/bin/pip install --no-cache-dir --require-hashes -r requirements.lock \
      && /opt/fluidity/bin/pip install --no-cache-dir --no-deps . ; \
    fi \
 && rm -rf /opt/fluidity/lib/python3*/site-packages/pip /opt/fluidity/lib/python3*/site-packages/setuptools \
 && find /opt/fluidity/lib -depth -type d \( -name test -o -name tests \) -path '*/site-packages/*' -exec rm -rf {} + \
 && find /opt/fluidity -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/fluidity/bin/python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/fluidity/lib \
 && /opt/fluidity/bin/twistd --help | grep -q fluidity-server

FROM ${BASE_IMAGE}
COPY --from=build /opt/fluidity /opt/fluidity
COPY configs/server.yaml /app/configs/server.yaml
ENV PATH=/opt/fluidity/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLUIDITY_PORT=8443
WORKDIR /app
# No shell user database needed: a fixed unprivileged uid.
USER 10001:10001
EXPOSE 8443
# SIGTERM is a graceful drain: open streams get drain_timeout (20 s) to finish, then exit 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["python3", "-m", "tunnel.server.healthcheck"]
# Certificates come from FLUIDITY_SERVER_CERT / FLUIDITY_SERVER_KEY / FLUIDITY_CA_CERT (PEM
# text; the Fargate task injects them from SSM), or mount files and pass --cert-file etc.
# Extra flags (`docker run IMAGE --port 9443`, the task definition's command) are appended.
ENTRYPOINT ["twistd", "-n", "--pidfile=", "fluidity-server", "--config", "/app/configs/server.yaml"]
