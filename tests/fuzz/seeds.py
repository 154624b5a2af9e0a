"""Seed corpora, written by ``run.py`` before a run (built here, so no binary file is committed).

Valid inputs of each format give the fuzzer a head start into the deep paths: VXLAN datagrams of
every frame kind the decoders handle (VLAN and QinQ tags, IPv4 options, IPv6 extension headers and
fragments, TCP super-packets with partial checksums, TLS, DNS, ICMP errors, ARP), a collector
stream (HELLO, BATCHes of real records, PING), batch bodies. The structured targets (admission,
config, pushdown, kube_pods) mutate valid documents of their own and need only a few bytes.
"""

from __future__ import annotations

import struct
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from nodeagent.transport import compression, messages, records
from nodeagent.wire import headers, normalize, vxlan

MAC_A, MAC_B = "02:00:00:00:00:05", "02:00:00:00:00:09"
A, B, A6, B6 = "10.0.0.5", "10.0.0.9", "fd00::5", "fd00::9"
TLS_HELLO = bytes.fromhex("160301002a0100002603035a") + bytes(32) + b"\x00\x02\x13\x01\x01\x00"


def _partial(frame: bytes) -> bytes:
    meta = headers.decode(frame)
    out = bytearray(frame)
    partial = normalize.pseudo_sum(meta, meta.end - meta.l4)
    struct.pack_into("!H", out, normalize.checksum_offset(meta), partial)
    return bytes(out)


def frames() -> list[bytes]:
    eth = Ether(src=MAC_A, dst=MAC_B)
    out = [
        eth / IP(src=A, dst=B) / TCP(sport=40000, dport=8443, flags="S"),
        eth / IP(src=B, dst=A) / TCP(sport=8443, dport=40000, flags="PA") / TLS_HELLO,
        eth / IP(src=A, dst=B) / UDP(sport=5353, dport=53) / b"\x12\x34\x01\x00\x00\x01",
        eth / IP(src=A, dst=B, options=[IPOption_NOP()] * 4) / UDP(sport=1, dport=9999) / b"x",
        eth / IP(src=B, dst=A) / ICMP(type=3, code=3) / IP(src=A, dst=B) / UDP(sport=5, dport=5432),
        eth / IP(src=A, dst=B, flags="MF", frag=0) / UDP(sport=7, dport=8) / (b"f" * 64),
        eth / IP(src=A, dst=B, frag=100) / (b"g" * 64),
        eth / Dot1Q(vlan=7) / IP(src=A, dst=B) / TCP(sport=2, dport=3, flags="A"),
        eth / Dot1AD(vlan=5) / Dot1Q(vlan=6) / IP(src=A, dst=B) / UDP(sport=4, dport=5),
        eth / IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP(sport=9, dport=10),
        eth / IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(m=1, id=7) / UDP(sport=11, dport=12) / b"h",
        eth / ARP(psrc=A, pdst=B),
    ]
    raw = [bytes(f) for f in out]
    raw.append(_partial(bytes(eth / IP(src=A, dst=B) / TCP(sport=40001, dport=8443, flags="PA")
                              / bytes(i % 251 for i in range(6000)))))
    raw.append(_partial(bytes(eth / IPv6(src=A6, dst=B6) / IPv6ExtHdrDestOpt()
                              / TCP(sport=5, dport=6, flags="PA") / bytes(3000))))
    return raw


def wire() -> list[bytes]:
    return [vxlan.encode(5, f) for f in frames()]


def pipeline() -> list[bytes]:
    """``sender:u8 length:u16 datagram`` frames (``fuzz_pipeline``): a flow both ways, from both pods."""
    datagrams = [vxlan.encode(5, f) for f in frames()]
    out = [struct.pack("!BH", 0, len(d)) + d for d in datagrams]
    out.append(b"".join(struct.pack("!BH", 2 * i, len(d)) + d for i, d in enumerate(datagrams[:4])))
    return out


def _records(n: int) -> list[records.Record]:
    return [records.Record(1_700_000_000_000_000_000 + i, len(f), f"shop/pod{i % 3}", 5, 1 + i % 2, f)
            for i, f in enumerate(frames()[:n])]


def transport() -> list[bytes]:
    zstd = compression.StreamCompressor()
    stream = messages.encode_hello(bytes(range(16)), "agent")
    for seq in (1, 2, 2, 5):
        raw = records.encode_records(_records(4 + seq))
        stream += messages.encode_batch(seq, 4 + seq, len(raw), zstd.compress(raw))
    stream += messages.encode_ping()
    return [bytes([i]) + stream for i in range(3)]


def records_bodies() -> list[bytes]:
    return [struct.pack("!H", n - 1) + records.encode_records(_records(n)) for n in (1, 5, 12)]


def structured() -> list[bytes]:
    return [b"", bytes(32), bytes(range(256)), b"\xff" * 64]


SEEDS = {"wire": wire, "pipeline": pipeline, "transport": transport, "records": records_bodies,
         "admission": structured, "config": structured, "pushdown": structured, "kube_pods": structured}


def write(target: str, directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS[target]()
    for i, seed in enumerate(seeds):
        (directory / f"seed-{i:03d}").write_bytes(seed)
    return len(seeds)
