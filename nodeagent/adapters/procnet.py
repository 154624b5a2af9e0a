"""The kernel's view of a UDP socket, read from ``/proc/net/udp`` and ``/proc/net/udp6``.

A socket is found by its inode (``os.fstat(fd).st_ino``). The receive queue (bytes waiting) and the
drop counter (datagrams the kernel discarded because the receive buffer was full, or a checksum or
memory failure) cost nothing per packet: they are read only when ``/status`` asks. The files list
the sockets of the reader's network namespace, which is the socket's own.

Line format (``udp4_format_sock`` in ``net/ipv4/udp.c``): ``sl local rem st tx_queue:rx_queue tr
tm->when retrnsmt uid timeout inode ref pointer drops``; queues in hexadecimal.
"""

from __future__ import annotations

FILES = ("/proc/net/udp", "/proc/net/udp6")


def udp_socket_counters(inode: int) -> dict[str, int]:
    """``rx_queue_bytes`` and ``kernel_drops`` of the UDP socket with this inode (drops 0 if absent)."""
    wanted = str(inode)
    for name in FILES:
        try:
            with open(name, encoding="ascii") as handle:
                next(handle, None)
                for line in handle:
                    fields = line.split()
                    if len(fields) >= 13 and fields[9] == wanted:
                        rx_queue = int(fields[4].split(":")[1], 16)
                        return {"rx_queue_bytes": rx_queue, "kernel_drops": int(fields[-1])}
        except OSError:
            continue
    return {"kernel_drops": 0}
