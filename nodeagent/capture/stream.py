"""Records -> a live pcapng stream (pure: bytes out). The encoding is ``wire.pcapng``'s.

A stream is: a section header naming the agent; per pod, an Interface Description Block
(``if_name`` = ``namespace/name``, ``if_description`` = ``pod ... vni ... via <agent>``) before its
first packet; per packet an Enhanced Packet Block with the direction in ``epb_flags`` (egress
leaves the pod: outbound) and in a comment (``shop/web egress``); and Interface Statistics Blocks
(``isb_ifrecv``: packets the capture was offered for that pod, ``isb_ifdrop``: those its queue
dropped, a comment in words) whenever the drops changed, at most once per ``statistics`` call the
caller makes, and always at the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from nodeagent.transport.records import Record
from nodeagent.wire import pcapng

_FLAGS = {1: pcapng.FLAG_OUTBOUND, 2: pcapng.FLAG_INBOUND}
_WORDS = {0: "unknown direction", 1: "egress", 2: "ingress"}


class StreamEncoder:
    def __init__(self, agent: str) -> None:
        self.agent = agent
        self._writer = pcapng.Writer()
        self._comments: dict[tuple[str, int], str] = {}
        self._reported: dict[str, int] = {}
        self.packets = 0

    def start(self) -> bytes:
        return self._writer.start(f"podmirror agent {self.agent}")

    def _describe(self, pod: str, vni: int) -> tuple[int, bytes]:
        return self._writer.describe(pod, f"pod {pod} vni {vni} via {self.agent}")

    def records(self, records: Iterable[Record]) -> bytes:
        parts = []
        comments = self._comments
        for r in records:
            idx, head = self._describe(r.pod, r.vni)
            if head:
                parts.append(head)
            comment = comments.get((r.pod, r.direction))
            if comment is None:
                comment = comments[(r.pod, r.direction)] = f"{r.pod} {_WORDS.get(r.direction, '?')}"
            parts.append(pcapng.packet(idx, r.ts_ns, r.frame, r.wire_len, _FLAGS.get(r.direction, 0),
                                       comment))
            self.packets += 1
        return b"".join(parts)

    def statistics(self, received: Mapping[str, int], dropped: Mapping[str, int], now_ns: int,
                   start_ns: int, *, final: bool = False, queue_limit: int = 0) -> bytes:
        """ISBs for the pods whose drops changed since the last call (every pod when ``final``)."""
        parts = []
        for pod in sorted(received):
            drops = dropped.get(pod, 0)
            if not final and self._reported.get(pod, 0) == drops:
                continue
            self._reported[pod] = drops
            idx, head = self._describe(pod, 0)
            words = (f"{pod}: {received[pod]} packets offered to this capture, {drops} dropped because "
                     f"the reader fell behind (queue of {queue_limit} packets)")
            parts += [head, pcapng.statistics(idx, now_ns, start_ns=start_ns, received=received[pod],
                                              dropped=drops,
                                              comment=words + (" (end of capture)" if final else ""))]
        return b"".join(parts)
