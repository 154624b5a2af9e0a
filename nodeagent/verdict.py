"""The accounting vocabulary: every packet ends as one ``Forward`` or one ``Drop`` reason.

One ``Drop`` value is the metric label, the ``/status`` key and the log token, so the three can
never disagree.

A packet may also be *held* for a bounded time before its outcome is known (``stages.vantage``:
the other vantage's copy of its flow may be on its way). ``Pipeline.process`` then answers
``HELD``; the packet's outcome comes later, from a later ``process`` call or from the timer
(``Pipeline.expire``), as a ``Released`` batch of forwards (in order) or as a counted drop. A held
packet is counted in ``held`` until then, so ``received == forwarded + sum(drops) + held`` at every
read.
"""

from __future__ import annotations

import enum
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
    QUEUE_FULL = "queue_full"
    """Every output that should take the packet was full."""
    OUTPUT_ERROR = "output_error"
    """Every output that should take the packet failed to write or send it."""


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
