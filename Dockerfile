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
COPY deployment ./deployment
COPY lambdas ./lambdas
COPY infra ./infra
COPY twisted ./twisted
COPY wheels ./wheels
# Dependencies exactly as locked, hashes checked (scripts/lock); then Fluidity without deps.
# Left out: pip, setuptools and the libraries' own test suites (the server never imports
# them). The venv holds its own copy of the interpreter (--copies, one file; python and python3
# link to it), which the final stage copies once more to grant the copy the right to bind 443.
# Bytecode is compiled once here (hash-checked, so copied timestamps do not matter) rather than at every
# start on a quarter of a vCPU.
RUN python3 -m venv --copies /opt/fluidity \
 && (cd /opt/fluidity/bin && real=$(ls python3.* | head -n 1) && ln -sf "$real" python3 && ln -sf "$real" python) \
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
# Port 443 as uid 10001 on any runtime, including one that keeps the kernel's
# net.ipv4.ip_unprivileged_port_start of 1024: a second copy of the venv's interpreter,
# python3-net, carries the file capability CAP_NET_BIND_SERVICE, what `setcap
# cap_net_bind_service=+ep` writes (VFS_CAP_REVISION_2: effective, permitted bit 10; the base
# has no setcap and the build no network, so Python writes the xattr). The entry point
# (tunnel/server/launch.py) runs twistd with it, or with the plain copy where the runtime
# dropped the capability: then ports from 1024 up still work and 443 fails in one line.
RUN cp "$(readlink -f /opt/fluidity/bin/python3)" /opt/fluidity/bin/python3-net \
 && python3 -c "import os, struct; os.setxattr('/opt/fluidity/bin/python3-net', 'security.capability', struct.pack('<5I', 0x02000001, 1 << 10, 0, 0, 0))"
ENV PATH=/opt/fluidity/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLUIDITY_PORT=443
WORKDIR /app
# No shell user database needed: a fixed unprivileged uid.
USER 10001:10001
EXPOSE 443
# SIGTERM is a graceful drain: open streams get drain_timeout (20 s) to finish, then exit 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["python3", "-m", "tunnel.server.healthcheck"]
# Certificates come from FLUIDITY_SERVER_CERT / FLUIDITY_SERVER_KEY / FLUIDITY_CA_CERT (PEM
# text; the Fargate task injects them from SSM), or mount files and pass --cert-file etc.
# Extra flags (`docker run IMAGE --port 9443`, the task definition's command) are appended.
ENTRYPOINT ["python3", "-m", "tunnel.server.launch", "-n", "--pidfile=", "fluidity-server", "--config", "/app/configs/server.yaml"]
