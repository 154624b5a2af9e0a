"""The tunnel sockets: one, or a SO_REUSEPORT group whose kernel program steers each flow to one worker.

With N workers, N UDP sockets are bound to the listen address with ``SO_REUSEPORT``; the kernel picks
one per datagram. Its default pick hashes the *outer* 4-tuple (sidecar address and port -> agent),
which spreads *pods*, not flows: the two copies of a flow between two monitored pods come from two
sidecars and would reach two workers, and per-packet dedup (which must see both copies) would miss.
So the group carries a classic BPF program (``SO_ATTACH_REUSEPORT_CBPF``) that picks the socket from
the *inner* packet. For UDP the kernel runs it on the UDP payload (``run_bpf_filter`` in
``net/core/sock_reuseport.c`` pulls the UDP header first): the VXLAN header is at offset 0, the
inner Ethernet header at 8. It returns an index into the group (the order the sockets joined);
an index out of range falls back to the kernel's hash, which ours never returns.

The steering key (``program``): the IP protocol and the **higher of the two ports**, hashed
multiplicatively (``(port << 8 | proto) * 0x9E3779B1``, its high 16 bits) modulo N. Why the higher
port: every copy of one flow has it. A client's connection seen from its pod is
``client:cport -> ClusterIP:80`` (before kube-proxy's DNAT), seen from the server's pod
``client:cport -> pod:8080`` (after), and both directions swap the ends; the client's ephemeral
port ``cport`` is the higher port in all four. Addresses are left out on purpose: DNAT changes one
end's address and SNAT (masquerade) the other's, and equal ports (NTP 123 <-> 123) need no
tie-break on addresses. The multiplicative hash matters: Linux hands out even ephemeral ports to
``connect()`` first, so ``port % 2`` would put every TCP client on worker 0.

Exact (every copy of a flow, both vantages and both directions, on one worker) when the client's
port is above both the service port and the target port, which the default ephemeral range
(32768-60999) guarantees for every service port below 32768, NodePorts included; also when the
service and target ports are equal, whatever the client port. Otherwise (a client port between
the two, e.g. a client bound to port 5000 calling a Service 80 -> 8080) the two vantages' copies
of that flow may reach two workers: each worker then decides with its copy alone, as two agents
on two nodes do (the vantage rule needs no cross-copy state; a per-packet duplicate of such a
flow may be forwarded twice, never lost).

Without ports (ICMP and ICMPv6, ARP, IPv4 fragments: both the first, which has ports, and the
rest, which have not, so a datagram's fragments stay together), and whatever the program does not
parse (VLAN tags, IPv6 extension headers, protocols other than TCP, UDP, SCTP, truncated frames):
worker 0, so per-packet dedup stays exact for all of it.

A socket of the same user that joins the group later gets an index >= N and is never chosen.
"""

from __future__ import annotations

import ctypes
import socket
import struct

from nodeagent.settings import ListenSettings
from sidecar_lite import cbpf
from sidecar_lite.cbpf import Instruction, pack

SO_ATTACH_REUSEPORT_CBPF = 51
"""asm-generic/socket.h; Python 3.11's socket module does not export it."""
SO_RCVBUFFORCE = 33
HASH_MULTIPLIER = 0x9E3779B1
"""2^32 / golden ratio (Knuth's multiplicative hashing): consecutive and even ports spread evenly."""
PORT_PROTOCOLS = (6, 17, 132)
"""TCP, UDP, SCTP: the protocols whose first 4 transport bytes are source and destination ports."""

# Offsets in the UDP payload: VXLAN header 0-7, inner Ethernet 8-21, inner IP from 22.
_ETHERTYPE, _L3 = 20, 22
_V4_FRAG, _V4_PROTO = _L3 + 6, _L3 + 9
_V6_NEXT, _V6_PORTS = _L3 + 6, _L3 + 40

# The opcodes used below, in the project's one cBPF vocabulary (sidecar_lite.cbpf).
_LDH, _LDB, _LDH_IND = cbpf.LD | cbpf.H | cbpf.ABS, cbpf.LD | cbpf.B | cbpf.ABS, cbpf.LD | cbpf.H | cbpf.IND
_LDX_MSH, _LDX_MEM = cbpf.LDX | cbpf.B | cbpf.MSH, cbpf.LDX | cbpf.MEM
_ST, _TXA = cbpf.ST, cbpf.MISC | cbpf.TXA
_JA, _JEQ = cbpf.JMP | cbpf.JA, cbpf.JMP | cbpf.JEQ | cbpf.K
_JGT_X, _JSET = cbpf.JMP | cbpf.JGT | cbpf.X, cbpf.JMP | cbpf.JSET | cbpf.K
_LSH, _OR_X, _MUL = cbpf.ALU | cbpf.LSH | cbpf.K, cbpf.ALU | cbpf.OR | cbpf.X, cbpf.ALU | cbpf.MUL | cbpf.K
_RSH, _MOD = cbpf.ALU | cbpf.RSH | cbpf.K, cbpf.ALU | cbpf.MOD | cbpf.K
_RET_A, _RET_K = cbpf.RET | cbpf.A, cbpf.RET | cbpf.K


_Row = tuple[str, int, str | int, str | int, str | int]


def _assemble(lines: list[_Row]) -> tuple[Instruction, ...]:
    """(label, code, jt, jf, k) rows -> instructions; a jump target given as a label is resolved to
    the relative offset cBPF wants (forward only)."""
    where = {label: i for i, (label, *_rest) in enumerate(lines) if label}

    def rel(target: str | int, i: int) -> int:
        return where[target] - i - 1 if isinstance(target, str) else target

    out = []
    for i, (_label, code, jt, jf, k) in enumerate(lines):
        out.append(Instruction(code, rel(jt, i), rel(jf, i), rel(k, i) if code == _JA else int(k)))
    return cbpf.validate(out)


def program(workers: int) -> tuple[Instruction, ...]:
    """The steering program for a group of ``workers`` sockets (see the module docstring)."""
    if not 1 <= workers <= 1024:
        raise ValueError(f"workers must be in 1..1024, got {workers}")
    tcp, udp, sctp = PORT_PROTOCOLS
    return _assemble([
        ("", _LDH, 0, 0, _ETHERTYPE),
        ("", _JEQ, "v6", 0, 0x86DD),
        ("", _JEQ, 0, "zero", 0x0800),
        ("", _LDH, 0, 0, _V4_FRAG),
        ("", _JSET, "zero", 0, 0x3FFF),         # more fragments or an offset: worker 0
        ("", _LDB, 0, 0, _V4_PROTO),
        ("", _JEQ, "v4ports", 0, tcp),
        ("", _JEQ, "v4ports", 0, udp),
        ("", _JEQ, "v4ports", "zero", sctp),
        ("v4ports", _ST, 0, 0, 0),              # M[0] = protocol
        ("", _LDX_MSH, 0, 0, _L3),              # X = IPv4 header length
        ("", _LDH_IND, 0, 0, _L3),              # source port
        ("", _ST, 0, 0, 1),
        ("", _LDH_IND, 0, 0, _L3 + 2),          # destination port
        ("", _JA, 0, 0, "max"),
        ("v6", _LDB, 0, 0, _V6_NEXT),           # no extension headers: TCP/UDP/SCTP right after
        ("", _JEQ, "v6ports", 0, tcp),
        ("", _JEQ, "v6ports", 0, udp),
        ("", _JEQ, "v6ports", "zero", sctp),
        ("v6ports", _ST, 0, 0, 0),
        ("", _LDH, 0, 0, _V6_PORTS),
        ("", _ST, 0, 0, 1),
        ("", _LDH, 0, 0, _V6_PORTS + 2),
        ("max", _LDX_MEM, 0, 0, 1),             # A = destination port, X = source port
        ("", _JGT_X, "hash", 0, 0),
        ("", _TXA, 0, 0, 0),                    # A = the higher port
        ("hash", _LSH, 0, 0, 8),
        ("", _LDX_MEM, 0, 0, 0),
        ("", _OR_X, 0, 0, 0),                   # A = port << 8 | protocol
        ("", _MUL, 0, 0, HASH_MULTIPLIER),
        ("", _RSH, 0, 0, 16),
        ("", _MOD, 0, 0, workers),
        ("", _RET_A, 0, 0, 0),
        ("zero", _RET_K, 0, 0, 0),
    ])


def attach(sock: socket.socket, insns: tuple[Instruction, ...]) -> None:
    """Install ``insns`` as the steering program of ``sock``'s reuseport group (before or after bind)."""
    code = pack(insns)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("@HP", len(insns), ctypes.addressof(buffer))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def open_sockets(settings: ListenSettings, count: int) -> list[socket.socket]:
    """``count`` non-blocking UDP sockets bound to the listen address: one plain socket, or a
    reuseport group in worker order with the steering program attached before the first bind (no
    datagram is ever steered by the kernel's default hash). Port 0: the first bind picks a port and
    the others join it."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    socks: list[socket.socket] = []
    port = settings.port
    try:
        for index in range(count):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            socks.append(sock)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if index == 0:
                    attach(sock, program(count))
            _set_rcvbuf(sock, settings.rcvbuf)
            sock.setblocking(False)
            sock.bind((settings.host, port))
            port = sock.getsockname()[1]
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    # SO_RCVBUFFORCE ignores net.core.rmem_max but needs CAP_NET_ADMIN; fall back quietly.
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
