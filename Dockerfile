# One image for the node agent, the injection webhook and the sidecar:
#   nodeagent run ...      (DaemonSet, deploy/base/agent.yaml)
#   nodeagent webhook ...  (Deployment, deploy/base/webhook.yaml)
#   sidecar-lite           (injected container; env-configured, see nodeagent/webhook/inject.py)
# Build where a registry exists: docker build -t podmirror:0.1.0 .
# Without a registry or a Docker daemon, scripts/image.sh builds the same contents from Debian's
# packages (mmdebstrap) and imports them into a cluster's containerd as podmirror:dev;
# tests/cluster/test_image.py checks that the two agree (packages, user, entry points, environment).
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv binutils \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nodeagent nodeagent
COPY sidecar_lite sidecar_lite
COPY scripts/lib/slim-venv.sh /tmp/slim-venv.sh
# A venv without pip for podmirror; pip runs from a throwaway venv (--python), as in scripts/image.sh.
RUN python3 -m venv --without-pip /opt/podmirror \
 && python3 -m venv /tmp/pip \
 && /tmp/pip/bin/pip install --no-cache-dir --upgrade pip \
 && /tmp/pip/bin/pip --python /opt/podmirror/bin/python install --no-cache-dir . \
 && /tmp/slim-venv.sh /opt/podmirror/lib/python3.11/site-packages

FROM debian:bookworm-slim
# libpcap: BPF filter expressions are compiled once at start-up (scapy's libpcap binding);
# libstdc++6: numpy's manylinux wheel links against it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libpcap0.8 libstdc++6 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/podmirror /opt/podmirror
ENV PATH=/opt/podmirror/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The agent and the webhook run unprivileged; the injected sidecar sets runAsUser 0 itself
# (its capabilities, NET_RAW or NET_ADMIN, are only effective for root).
USER 65532:65532
EXPOSE 14789/udp 9476/tcp 9477/tcp 8443/tcp
CMD ["nodeagent", "run"]
