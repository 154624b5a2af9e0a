# One image for the node agent, the injection webhook and the sidecar:
#   nodeagent run ...      (DaemonSet, deploy/base/agent.yaml)
#   nodeagent webhook ...  (Deployment, deploy/base/webhook.yaml)
#   sidecar-lite           (injected container; env-configured, see nodeagent/webhook/inject.py)
# Build: docker build -t podmirror:0.1.0 .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nodeagent nodeagent
COPY sidecar_lite sidecar_lite
RUN python -m venv /opt/podmirror \
 && /opt/podmirror/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/podmirror/bin/pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
# libpcap: BPF filter expressions are compiled once at start-up (scapy's libpcap binding).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpcap0.8 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/podmirror /opt/podmirror
ENV PATH=/opt/podmirror/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The agent and the webhook run unprivileged; the injected sidecar sets runAsUser 0 itself
# (its capabilities, NET_RAW or NET_ADMIN, are only effective for root).
USER 65532:65532
EXPOSE 14789/udp 9477/tcp 8443/tcp
CMD ["nodeagent", "run"]
