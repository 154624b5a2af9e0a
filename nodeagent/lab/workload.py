"""Drive the lab's traffic from outside: start servers, run clients and iperf3, collect results.

A ``Workload`` starts ``traffic serve`` (HTTP, DNS, TLS) and an ``iperf3 -s`` in each server
namespace, makes a throwaway certificate with the ``openssl`` binary, and runs clients as
subprocesses in client namespaces. Servers are ready when their TCP port accepts a connection
from inside their namespace (polled, with a deadline).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nodeagent.lab.netns import LabError, run
from nodeagent.lab.topology import Host, Lab, Pod
from nodeagent.lab.traffic import HTTP_PORT, IPERF_PORT, TLS_PORT

Endpoint = Pod | Host


class Workload:
    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.cert, self.key = workdir / "tls-cert.pem", workdir / "tls-key.pem"

    def make_certificate(self) -> None:
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "1", "-subj", "/CN=web.lab.podmirror",
             "-addext", "subjectAltName=DNS:web.lab.podmirror",
             "-keyout", str(self.key), "-out", str(self.cert)])

    def start_servers(self, server: Endpoint, *, iperf: bool = True, body: int = 20_000,
                      corpus: list[str] | None = None) -> None:
        """HTTP, DNS and TLS servers (and iperf3). HTTP answers with ``body`` random bytes (the same
        each time), or with ``corpus``'s documents one after the other (``traffic.corpus_files``)."""
        if not self.cert.exists():
            self.make_certificate()
        cmd = [sys.executable, "-m", "nodeagent.lab.traffic", "serve", "--cert", str(self.cert), "--key",
               str(self.key), "--body", str(body)]
        if corpus is not None:
            listing = self.workdir / f"corpus-{server.name}.txt"
            listing.write_text("\n".join(corpus) + "\n")
            cmd += ["--corpus", str(listing)]
        self.lab.ns.spawn(server.ns, cmd)
        ports = [HTTP_PORT, TLS_PORT]
        if iperf:
            self.lab.ns.spawn(server.ns, ["iperf3", "-s", "-p", str(IPERF_PORT)])
            ports.append(IPERF_PORT)
        for port in ports:
            self._wait_listening(server, port)

    def start_sink(self, host: Endpoint, port: int = 4789) -> subprocess.Popen[bytes]:
        """A UDP receiver that discards (the sensor's port must be open, or the node gets ICMP errors)."""
        cmd = [sys.executable, "-m", "nodeagent.lab.traffic", "sink", "--port", str(port)]
        proc = self.lab.ns.spawn(host.ns, cmd)
        deadline = time.monotonic() + 10.0
        while not self.lab.ns.exec(host.ns, ["ss", "-Hnul", f"sport = :{port}"]).stdout.strip():
            if time.monotonic() > deadline:
                raise LabError(f"{host.name}: the UDP sink on port {port} did not start")
            time.sleep(0.05)
        return proc

    def _wait_listening(self, server: Endpoint, port: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.lab.ns.connect(server.ns, server.ip, port, timeout=1.0).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise LabError(f"{server.name}: nothing listens on {server.ip}:{port}") from None
                time.sleep(0.1)

    def client(self, client: Endpoint, server: Endpoint, *, rounds: int = 1, ping: int = 2,
               ipv6: bool = True, tls: bool = True) -> dict[str, int]:
        """One or more rounds of HTTP, DNS, TLS and ping from ``client`` to ``server`` (v4 and v6)."""
        cmd = [sys.executable, "-m", "nodeagent.lab.traffic", "client", "--target", server.ip,
               "--rounds", str(rounds), "--ping", str(ping)]
        if ipv6:
            cmd += ["--target", server.ip6]
        if tls:
            cmd += ["--cafile", str(self.cert)]
        proc = self.lab.ns.exec(client.ns, cmd, timeout=60 + rounds * 10)
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result

    def iperf(self, client: Endpoint, server: Endpoint, *, seconds: float = 3.0, udp_len: int | None = None,
              bitrate: str | None = None, reverse: bool = False) -> dict[str, Any]:
        """An iperf3 run; returns bits/s, bytes and (UDP) packets and losses as the receiver saw them."""
        cmd = ["iperf3", "-c", server.ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
        if udp_len is not None:
            cmd += ["-u", "-l", str(udp_len), "-b", bitrate or "0"]
        elif bitrate:
            cmd += ["-b", bitrate]
        if reverse:
            cmd.append("-R")
        proc = self.lab.ns.exec(client.ns, cmd, timeout=seconds + 30, check=False)
        try:
            end = json.loads(proc.stdout)["end"]
        except (ValueError, KeyError):
            raise LabError(f"iperf3 failed: {proc.stdout[-500:]} {proc.stderr[-500:]}") from None
        if udp_len is not None:
            s = end["sum"]
            return {"bps": s["bits_per_second"], "bytes": s["bytes"], "packets": s["packets"],
                    "lost": s["lost_packets"], "pps": s["packets"] / s["seconds"]}
        s = end["sum_received"]
        return {"bps": s["bits_per_second"], "bytes": s["bytes"], "sent_bytes": end["sum_sent"]["bytes"]}
