"""Bulk TCP through the agent: 64 KB GSO super-packets at an offered rate, delivered rate and loss.

What kernel-mode mirroring sends under bulk TCP: VXLAN datagrams of 65,234 bytes, each a GSO
super-packet of 45 x 1448 bytes of TCP payload with a partial checksum (as tc mirred copies a
pod's own TCP). A generator process offers ``--flows`` such flows (the super-packets of each in
sequence) at ``--rate`` super-packets per second to ``nodeagent run --workers N`` (the default
pipeline), which re-segments every super-packet into 45 frames and hands them to one output:

- ``pcap``: one file append per super-packet (``offer_segments``);
- ``vxlan``: VXLAN to a loopback sensor, 45 datagrams per ``sendmmsg``;
- ``vxlan+gso``: the same with the sensor's ``gso: true`` (UDP GSO: one send per super-packet).

Printed per row: offered and delivered super-packets/s, delivered Gbit/s of inner TCP payload,
the loss, and the agent's CPU (all its processes) per delivered super-packet.

Run: ``.venv/bin/python bench/bench_bulk.py [--rate 3000] [--seconds 4] [--workers 1,2]`` (no root).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from nodeagent.lab import loadgen  # noqa: E402
from nodeagent.lab.loopback import LoopbackAgent  # noqa: E402
from nodeagent.wire import headers, normalize, vxlan  # noqa: E402

POD = ("127.0.0.10", 10)
PAYLOAD = 45 * 1448
CTX = mp.get_context("fork")


def super_packets(flows: int, per_flow: int = 16) -> loadgen.Mix:
    """``flows`` TCP flows of ``per_flow`` consecutive 64 KB super-packets (timestamps option, MSS
    1448, partial checksum), from one pod to outside hosts, interleaved flow by flow."""
    eth = bytes.fromhex("020000000002020000000001" "0800")
    body = bytes(i % 251 for i in range(PAYLOAD))
    datagrams = []
    for n in range(per_flow):
        for f in range(flows):
            ip = bytearray.fromhex("450000001234400040060000") + socket.inet_aton(POD[0])
            ip += bytes([192, 0, 2, 1 + f])
            ip[2:4] = (20 + 32 + PAYLOAD).to_bytes(2, "big")
            seq = (1 + n * PAYLOAD).to_bytes(4, "big")
            tcp = bytes.fromhex("9c40") + (8080 + f).to_bytes(2, "big") + seq + bytes.fromhex(
                "00000001801801f5000000000101080a0000000100000002")
            frame = bytearray(eth + ip + tcp + body)
            meta = headers.decode(bytes(frame))
            partial = normalize.pseudo_sum(meta, meta.end - meta.l4) or 0xFFFF
            frame[meta.l4 + 16 : meta.l4 + 18] = partial.to_bytes(2, "big")
            datagrams.append(vxlan.encode(POD[1], bytes(frame)))
    runs = [(0, i, min(loadgen.RUN, len(datagrams) - i)) for i in range(0, len(datagrams), loadgen.RUN)]
    return loadgen.Mix([POD[0]], runs, datagrams, flows)


def _generate(the_mix: loadgen.Mix, target: tuple[str, int], rate: float, seconds: float, conn: Any) -> None:
    conn.send(loadgen.send(the_mix, target, rate, seconds))


def run(output: str, workers: int, the_mix: loadgen.Mix, rate: float, seconds: float) -> dict[str, Any]:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the sensor: never read, the kernel drops
    sink.bind(("127.0.0.1", 0))
    tmp = Path(tempfile.mkdtemp(prefix="pmbb-"))
    config: dict[str, Any] = {"senders": [f"{POD[0]},auto,bench/pod"]}
    if output == "pcap":
        config["outputs"] = {"pcap": {"dir": str(tmp / "pcap"), "max_total_bytes": 256 << 20}}
    else:
        config["outputs"] = {"sensors": [{"host": "127.0.0.1", "port": sink.getsockname()[1],
                                          "gso": output == "vxlan+gso"}]}
    (tmp / "agent.json").write_text(json.dumps(config))
    agent = LoopbackAgent(["--config", str(tmp / "agent.json"), "--workers", str(workers)])
    try:
        count0, cpu0 = agent.count()[0], agent.cpu()
        parent, child = CTX.Pipe()
        gen = CTX.Process(target=_generate, args=(the_mix, agent.target, rate, seconds, child))
        gen.start()
        sent: loadgen.Sent = parent.recv()
        gen.join()
        last, changed = agent.count()[0], time.monotonic()
        while time.monotonic() - changed < 0.5:
            time.sleep(0.1)
            if (now := agent.count()[0]) != last:
                last, changed = now, time.monotonic()
        elapsed = max(changed - sent.started, sent.seconds)
        delivered, cpu = last - count0, agent.cpu() - cpu0
    finally:
        agent.stop()
        sink.close()
    return {"offered": sent.pps, "delivered": delivered / elapsed,
            "loss": 1 - delivered / max(1, sent.packets), "gbps": delivered * PAYLOAD * 8 / elapsed / 1e9,
            "cpu_us": cpu / max(1, delivered) * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=3000.0, help="super-packets offered per second")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--flows", type=int, default=8)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--outputs", default="pcap,vxlan,vxlan+gso")
    args = parser.parse_args()
    the_mix = super_packets(args.flows)
    print(f"{args.flows} flows of 64 KB super-packets ({PAYLOAD:,} payload bytes, 45 segments) offered at "
          f"{args.rate:,.0f}/s ({args.rate * PAYLOAD * 8 / 1e9:.2f} Gbit/s) for {args.seconds:.0f} s")
    print(f"{'output':<11}{'workers':>8}{'offered SP/s':>14}{'delivered SP/s':>16}{'Gbit/s':>8}{'loss':>8}"
          f"{'CPU us/SP':>11}")
    for output in args.outputs.split(","):
        for workers in (int(n) for n in args.workers.split(",")):
            r = run(output, workers, the_mix, args.rate, args.seconds)
            print(f"{output:<11}{workers:>8}{r['offered']:>14,.0f}{r['delivered']:>16,.0f}{r['gbps']:>8.2f}"
                  f"{r['loss']:>8.1%}{r['cpu_us']:>11.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
