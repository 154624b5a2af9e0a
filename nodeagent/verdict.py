"""The accounting vocabulary: every packet ends as one ``Forward`` or one ``Drop`` reason.

One ``Drop`` value is the metric label, the ``/status`` key and the log token, so the three can
never disagree. ``Drop`` lists only what the pipeline decides; what an output loses after the
pipeline forwarded a packet is its sibling ``OutputDrop`` (at the end of this module), counted by
each output under ``state()["dropped"]``.

A packet may also be *held* for a bounded time before its outcome is known (``stages.vantage``:
the other vantage's copy of its flow may be on its way). ``Pipeline.process`` then answers
``HELD``; the packet's outcome comes later, from a later ``process`` call or from the timer
(``Pipeline.expire``), as a ``Released`` batch of forwards (in order) or as a counted drop. A held
packet is counted in ``held`` until then, so ``received == forwarded + sum(drops) + held`` at every
read.
"""

from __future__ import annotations

import enum
import errno
from typing import NamedTuple

from nodeagent.pods.index import PodInfo
from nodeagent.wire.headers import PacketMeta


class Drop(enum.StrEnum):
    UNKNOWN_SENDER = "unknown_sender"
    """The tunnel's source address is not a monitored pod on this node."""
    WRONG_VNI = "wrong_vni"
    """The source is a known pod but the VNI is not the one assigned to it (spoofed or stale)."""
    MALFORMED = "malformed"
    """The datagram or its inner frame could not be parsed."""
    DUPLICATE = "duplicate"
    """Another vantage's copy of a packet already forwarded."""
    OTHER_VANTAGE = "other_vantage"
    """A flow seen from two vantages: this copy comes from the vantage that is not chosen."""
    NOT_OWNER = "not_owner"
    """A cross-node flow that the other node's agent forwards."""
    FILTERED = "filtered"
    """An exclude rule (or the default action) matched."""
    OTHER_CONTAINER = "other_container"
    """The pod's monitored containers were selected (``PodInfo.ports``) and this packet belongs to
    none of them (``stages.containers``)."""
    CUT_OFF = "cut_off"
    """An encrypted flow past its cutoff, configured to forward nothing."""
    FOREIGN = "foreign"
    """Neither end of the frame is one of the sender pod's addresses (nor link-scoped, such as its
    IPv6 link-local neighbour discovery): a pod's tunnel speaks only for the pod's own traffic."""
    INTERNAL_ERROR = "internal_error"
    """Processing raised on this datagram (a bug, never expected): the receiver counts it here, logs
    it with its traceback (rate-limited) and goes on with the next datagram."""


class Direction(enum.IntEnum):
    """Direction relative to the sender pod."""

    UNKNOWN = 0
    EGRESS = 1
    """Out of the pod (the pod's address is the source)."""
    INGRESS = 2
    """Into the pod."""


class Forward(NamedTuple):
    """A packet to hand to the outputs."""

    frame: memoryview
    """The inner Ethernet frame, possibly sliced; ``wire_len`` keeps its original length."""
    meta: PacketMeta
    vni: int
    pod: PodInfo
    direction: Direction
    wire_len: int
    """Length of the frame as captured, before any slicing (pcap's orig_len)."""
    now: float
    """Time of reception, in seconds of the caller's clock."""


class Held:
    """``HELD``: the packet is held (counted in ``held``); its outcome comes later."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "HELD"


HELD = Held()


class Released(NamedTuple):
    """Packets to hand to the outputs now, in this order: held packets whose wait ended, and maybe
    the packet of the current call after them (its own flow's held packets go first)."""

    forwards: tuple[Forward, ...]


Verdict = Forward | Drop | Held | Released


class OutputDrop(enum.StrEnum):
    """Why an output did not deliver a packet the pipeline forwarded (its sibling ``Drop`` counts
    the pipeline's decisions; ``received == forwarded + sum(drops) + held`` does not see these).

    Each output counts per packet, where the loss happens, in ``state()["dropped"]`` {reason:
    count}, listing exactly the reasons it can emit; ``/metrics`` exports them as
    ``podmirror_output_packets_dropped_total{output=, reason=}``. One value is the ``/status`` key,
    the metric label and the log token, as for ``Drop``.
    """

    QUEUE_FULL = "queue_full"
    """The output's bounded queue was full: the pcap writer's backlog, a collector's outbox (oldest
    batches evicted first), a sensor socket's send buffer (EAGAIN, ENOBUFS)."""
    UNREACHABLE = "unreachable"
    """The destination said it cannot be reached (ICMP unreachable, reported on a VXLAN send), or
    the rest of a super-packet was abandoned with it."""
    SEND_ERROR = "send_error"
    """Any other failed send; the output's ``last_error`` names the errno."""
    WRITE_ERROR = "write_error"
    """The pcap file write failed (disk full, I/O error): the records of that buffer are lost."""
    SHUTDOWN = "shutdown"
    """Still unacknowledged by a collector when the output closed."""
    INTERNAL_ERROR = "internal_error"
    """The output raised while taking the packet (a bug): counted by ``adapters.outputs.Fanout``."""


_SEND_FAILURES = {
    **dict.fromkeys((errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN),
                    OutputDrop.UNREACHABLE),
    **dict.fromkeys((errno.EAGAIN, errno.ENOBUFS), OutputDrop.QUEUE_FULL),
}


def send_failure(err: int | None) -> OutputDrop:
    """The reason a datagram send that failed with errno ``err`` lost its packet."""
    return _SEND_FAILURES.get(err or 0, OutputDrop.SEND_ERROR)
