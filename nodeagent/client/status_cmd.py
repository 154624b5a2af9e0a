"""``nodeagent status``: every node's agent in one table, for people, scripts and CI.

    nodeagent status                       # every agent of the cluster (kubeconfig)
    nodeagent status --json
    nodeagent status --agent http://10.1.0.2:9477 --agent http://10.2.0.2:9477

Columns: node, agent ready, monitored pods, received, forwarded, drops by reason (non-zero),
outputs (each output's packets and its own drops), silent pods. Exit code 1 when any agent is not
ready or cannot be read, or any monitored pod is silent; 0 otherwise (2: bad usage). Each agent's
``/status`` is read directly from its pod address (``client.agents``), 5 s timeout, in parallel.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from nodeagent.client import agents
from nodeagent.client.capture_cmd import add_connection
from nodeagent.settings import STATUS_PORT

TIMEOUT = 5.0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("status", help="every node's agent in one table (exit 1 if any is unhealthy)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    add_connection(p, STATUS_PORT)
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    try:
        endpoints = find(args)
    except (agents.DiscoveryError, ValueError) as exc:
        print(f"nodeagent status: {exc}", file=sys.stderr)
        return 1
    if not endpoints:
        print("nodeagent status: no agent found", file=sys.stderr)
        return 1
    rows = read_all(endpoints)
    if args.json:
        print(json.dumps({"agents": rows, "healthy": healthy(rows)}, indent=1, sort_keys=True))
    else:
        print(table(rows))
    return 0 if healthy(rows) else 1


def find(args: argparse.Namespace) -> list[agents.Endpoint]:
    if args.agent:
        return [agents.from_url(url if "://" in url else f"http://{url}", STATUS_PORT) for url in args.agent]
    import kubernetes.client

    agents.say("status: listing the agents through the Kubernetes API", args.quiet)
    core = kubernetes.client.CoreV1Api(agents.api_client(args.kubeconfig, args.context))
    return sorted(agents.agents(core, args.agent_namespace).values(), key=lambda e: e.node)


def read(endpoint: agents.Endpoint) -> dict[str, Any]:
    row: dict[str, Any] = {"node": endpoint.node, "agent": endpoint.name, "url": endpoint.status_url}
    try:
        with urllib.request.urlopen(f"{endpoint.status_url}/status", timeout=TIMEOUT) as response:
            row["status"] = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        row["error"] = str(getattr(exc, "reason", exc))
    return row


def read_all(endpoints: list[agents.Endpoint]) -> list[dict[str, Any]]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(endpoints))) as pool:
        return list(pool.map(read, endpoints))


def silent(row: dict[str, Any]) -> list[str]:
    return list((row.get("status") or {}).get("silent") or [])


def healthy(rows: list[dict[str, Any]]) -> bool:
    return all("status" in r and r["status"].get("ready") and not silent(r) for r in rows)


def _outputs(st: dict[str, Any]) -> str:
    parts = []
    for name, state in (st.get("outputs") or {}).items():
        if name == "capture" or not isinstance(state, dict):
            continue
        dropped = state.get("dropped")  # {verdict.OutputDrop reason: packets}
        lost = {k: v for k, v in dropped.items() if v} if isinstance(dropped, dict) else {}
        packets = state.get("packets", state.get("sent", state.get("delivered", "")))
        detail = f" ({', '.join(f'{k} {v}' for k, v in lost.items())})" if lost else ""
        parts.append(f"{name} {packets}{detail}")
    return "; ".join(parts) or "-"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("NODE", "READY", "PODS", "RECEIVED", "FORWARDED", "DROPS", "OUTPUTS", "SILENT")
    lines = [head]
    for r in rows:
        st = r.get("status")
        if st is None:
            lines.append((r["node"], "unreachable", "-", "-", "-", "-", r.get("error", "")[:60], "-"))
            continue
        drops = ", ".join(f"{k} {v}" for k, v in sorted(st.get("drops", {}).items()) if v) or "0"
        lines.append((r["node"], "yes" if st.get("ready") else "NO", str(len(st.get("pods") or {})),
                      str(st.get("received", 0)), str(st.get("forwarded", 0)), drops, _outputs(st),
                      ", ".join(silent(r)) or "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)
    bad = [r for r in rows if not ("status" in r and r["status"].get("ready"))]
    quiet = sum(len(silent(r)) for r in rows)
    return text + f"\n{len(rows)} agents, {len(bad)} not ready or unreachable, {quiet} silent pods"
