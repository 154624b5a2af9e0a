"""Run every benchmark once, keep their full output, and print the README's "Measured" table rows.

Run as root on a quiet machine (about 20 minutes): ``sudo .venv/bin/python bench/run_all.py
[--out DIR] [--only NAME,...]``. Each benchmark runs with its defaults as a separate process, in
the order below; its full output goes to ``DIR/<name>.txt`` (default ``bench-results-<time>``),
and one Markdown row per benchmark, with the command and its key figures taken from that output,
is printed at the end, ready for the README. A benchmark that fails shows its exit code in its row.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lines(text: str, pattern: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if re.search(pattern, line)]


def _receive(text: str) -> str:
    rows = []
    for line in text.splitlines():
        m = re.match(r"(bare recvmmsg|kernel vxlan|agent workers=\d)\s+([\d,]+)\s+[\d,]+\s+([\d,]+)"
                     r"\s+[\d,]+\s+([\d.]+%)\s+([\d.]+)\s+([\d.]+)", line)
        if m:
            name, offered, delivered, loss, cpu, ratio = m.groups()
            rows.append(f"{name} at {offered}/s: {delivered}/s delivered, loss {loss}, {cpu} us CPU/packet "
                        f"({ratio}x bare)")
    return "; ".join(rows + _lines(text, r"^at .* workers=2 delivered"))


def _table(pattern: str) -> Callable[[str], str]:
    return lambda text: "; ".join(" ".join(line.split()) for line in _lines(text, pattern))


BENCHES: list[tuple[str, str, Callable[[str], str]]] = [
    ("bench_receive", "delivered rate, loss and CPU per packet at offered loads (10,000 flows, IMIX): bare "
     "recvmmsg, kernel VXLAN, agent with 1 and 2 workers", _receive),
    ("bench_pipeline", "CPU per datagram, step by step, on the same mix (a profile)",
     _table(r"^\s+(sender check|\+ |fan-out)")),
    ("bench_bulk", "64 KB super-packets at an offered rate: delivered Gbit/s, loss, CPU per super-packet",
     _table(r"^(pcap|vxlan)")),
    ("bench_lab", "the lab's tunnel coverage, 0.5-4 Gbit/s of pod TCP, 1 and 2 workers",
     _table(r"^\s+\d+[MG]\s+\d")),
    ("bench_memory", "RSS per worker with a million flows, tables bounded and raised to 1M",
     _table(r"^(defaults|1M)\s")),
    ("bench_sidecar", "sniff mode's CPU per frame, ring vs socket, at fixed loads; the tunnel MTU",
     _table(r"^(UDP|TCP) .*(ring|socket)|^node veths")),
    ("bench_datapath", "what mirroring costs the pod and the node (softirq from /proc/stat), the agent "
     "receiving",
     _table(r"ratio to no mirroring|more than|processe?s? CPU|RSS|received \(share\)")),
    ("bench_bandwidth", "uplink bytes to the remote sensor: podmirror against the direct design, both run",
     _table(r"^(direct|podmirror)\s|podmirror / direct|missing at the sensor")),
    ("bench_remote", "batched TLS against VXLAN output on non-repeating content; capture-to-collector delay",
     _table(r"^== |agent batched TLS|capture-to-collector")),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(f"bench-results-{time.strftime('%Y%m%d-%H%M%S')}"))
    parser.add_argument("--only", help="comma-separated benchmark names (default: all)")
    args = parser.parse_args()
    wanted = set(args.only.split(",")) if args.only else {name for name, _, _ in BENCHES}
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, what, summarize in BENCHES:
        if name not in wanted:
            continue
        command = [sys.executable, f"bench/{name}.py"]
        print(f"run_all: {name} ...", flush=True)
        started = time.monotonic()
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        text = proc.stdout + ("\n" + proc.stderr if proc.returncode else "")
        (args.out / f"{name}.txt").write_text(text)
        failed = f"FAILED (exit {proc.returncode}), see {name}.txt"
        result = summarize(text) if proc.returncode == 0 else failed
        print(f"run_all: {name} done in {time.monotonic() - started:.0f} s", flush=True)
        rows.append(f"| `.venv/bin/python bench/{name}.py` | {what} | {result} |")
    print(f"\nfull outputs in {args.out}\n")
    print("| command | what it compares | result |\n|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
