"""The lab's tunnel coverage against the pods' bulk TCP rate: the loss curve, 1 and 2 workers.

Runs ``nodeagent lab --duration 8 --iperf-rate R --workers N`` as a user would (a node of
namespaces, three pods with kernel-mode sidecars, the agent with pcap and VXLAN outputs, a remote
sensor, HTTP/DNS/TLS/ping rounds and one iperf3 TCP transfer from ``client`` to ``web``, both
monitored, so every iperf packet is mirrored twice) for each rate R and worker count N, and reads
its summary: the packets the pods' VXLAN devices sent during the traffic, the datagrams the agent
received, their ratio (the coverage), the agent's socket drops and the rate iperf3 reached. The
iperf3 transfer is one TCP connection, so one worker handles it, with the other vantage's copies.
While each lab runs, ``/proc/stat`` is read every half second; the busiest 2 seconds (the iperf3
transfer) are printed: how busy all cores were, and how much of that was user space (the agent's
Python, iperf3, the sidecars) and how much the kernel (system time and softirq: the pods' TCP, the
mirroring, the tunnel's delivery, the agent's sends to the sensor and pcap writes).

Run as root: ``.venv/bin/python bench/bench_lab.py [--rates 500M,1G,2G,3G,4G] [--workers 1,2]``
(about 25 s per run).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from nodeagent.lab import measure  # noqa: E402

SAMPLE = 0.5
"""Seconds between two reads of /proc/stat."""
WINDOW = 4
"""Samples per window: the busiest 2 seconds."""


def lab(rate: str, workers: str, duration: float, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "nodeagent", "lab", "--duration", str(duration), "--iperf-rate", rate,
           "--workers", workers, "--output", str(out)]
    log = out.with_suffix(".log")
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        samples = [measure.machine()]
        while proc.poll() is None:
            time.sleep(SAMPLE)
            samples.append(measure.machine())
    text = log.read_text()
    tunnel = re.search(r"VXLAN devices sent (\d+) packets, the agent received (\d+)", text)
    iperf = re.search(r"iperf3 client -> web: ([\d.]+) Gbit/s", text)
    drops = re.search(r"'kernel_drops': (\d+)", text)
    if proc.returncode != 0 or tunnel is None:
        return {"error": text[-800:]}
    sent, received = int(tunnel.group(1)), int(tunnel.group(2))
    return {"sent": sent, "received": received, "coverage": received / max(1, sent),
            "iperf_gbps": float(iperf.group(1)) if iperf else 0.0,
            "kernel_drops": int(drops.group(1)) if drops else 0, **busiest(samples)}


def busiest(samples: list[measure.MachineCpu]) -> dict[str, float]:
    """The window of ``WINDOW`` intervals with the least idle time: shares of all cores' time."""
    windows = [samples[i + WINDOW] - samples[i] for i in range(len(samples) - WINDOW)]
    windows = windows or [samples[-1] - samples[0]]
    top = max(windows, key=lambda w: w.busy / max(w.busy + w.idle, 1e-9))
    total = max(top.busy + top.idle, 1e-9)
    return {"busy": top.busy / total, "user": top.user / total,
            "kernel": (top.system + top.softirq + top.irq) / total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="500M,1G,2G,3G,4G")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_lab: needs root (network namespaces)", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="pmlabb-") as tmp:
        for workers in args.workers.split(","):
            for rate in args.rates.split(","):
                print(f"  lab --iperf-rate {rate} --workers {workers} ...", flush=True)
                out = Path(tmp) / f"{rate}-{workers}"
                rows.append((rate, workers, lab(rate, workers, args.duration, out)))
    print(f"\n{'iperf rate':>10}{'workers':>9}{'iperf Gbit/s':>14}{'tunnel sent':>13}{'received':>10}"
          f"{'coverage':>10}{'socket drops':>14}{'busiest 2 s: busy':>19}{'user':>6}{'kernel':>8}")
    for rate, workers, r in rows:
        if "error" in r:
            print(f"{rate:>10}{workers:>9}  FAILED: {r['error']}")
            continue
        print(f"{rate:>10}{workers:>9}{r['iperf_gbps']:>14.2f}{r['sent']:>13}{r['received']:>10}"
              f"{r['coverage']:>10.2f}{r['kernel_drops']:>14}{r['busy']:>19.0%}{r['user']:>6.0%}"
              f"{r['kernel']:>8.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
