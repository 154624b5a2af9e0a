"""Target ``config``: the agent's configuration file (``settings.load_file``'s parse and ``load``), and
what the agent compiles from it at start-up (``filters.compile``: rules, presets, tcpdump
expressions through libpcap).

The input mutates one of a few valid configurations (the shipped ConfigMaps and a rich one), or,
one time in four, is YAML text. Checks: only ``ConfigError`` escapes (``nodeagent run`` prints it
and exits 2 naming the field); a configuration that loads compiles its filters or names the rule.
"""

from __future__ import annotations

import atheris
import yaml

from tests.fuzz import harness

with harness.instrumented():
    from nodeagent import settings
    from nodeagent.settings import ConfigError
    from nodeagent.stages import filters

BASES = [
    {"listen": "0.0.0.0:14789", "status": {"host": "0.0.0.0", "port": 9477},
     "pushdown": {"host": "0.0.0.0", "port": 9476},
     "outputs": {"pcap": {"dir": "/var/lib/podmirror/pcap", "max_bytes": 67108864}},
     "kube": {"silent_after": 120}},
    {"senders": ["10.0.0.5,auto,shop/web,8080+53",
                 {"ip": "fd00::5", "vni": 5, "namespace": "a", "name": "b"}],
     "peers": ["10.1.0.7,shop/db,5432"],
     "outputs": {"sensors": ["127.0.0.1:4789", {"host": "10.9.0.1", "vni": "0x10", "gso": True}],
                 "transport": {"collectors": ["10.9.0.2"], "ca_file": "/ca.pem", "cert_file": "/c.pem",
                               "key_file": "/c.key", "batch_bytes": 65536, "max_delay": 0.02}},
     "normalize": {"max_frame": 1464}, "dedup": {"vantage": "server", "window": 0.05},
     "filters": {"presets": ["drop-health-probes"], "node_ip": "192.168.0.1", "default": "include",
                 "rules": [{"name": "no-dns", "action": "exclude", "ports": [53, "8000-8100"]},
                           {"action": "include", "direction": "out", "peer": ["10.0.0.0/8"],
                            "protocol": "tcp", "snaplen": 128},
                           {"action": "exclude", "bpf": "udp and port 123", "namespace": "kube-system"}]},
     "cutoff": {"budget": 16384, "after": "drop"}, "log": {"level": "DEBUG"}},
]
WORDS = ("listen", "status", "pushdown", "senders", "peers", "outputs", "normalize", "dedup", "filters",
         "cutoff", "log", "kube", "pcap", "sensors", "transport", "collectors", "host", "port", "ip", "vni",
         "namespace", "name", "rules", "action", "include", "exclude", "ports", "peer", "protocol", "bpf",
         "snaplen", "direction", "in", "out", "both", "presets", "drop-health-probes", "auto", "tcp", "udp",
         "icmp", "max_frame", "budget", "after", "headers", "drop", "enabled", "window", "capacity",
         "10.0.0.5", "fd00::5", "0.0.0.0:1", "port 53", "tcp[13] & 2 != 0", "1-2", "0x10", "batch_bytes",
         "node_ip", "default", "peer_namespace", "peer_labels", "labels", "level", "max_delay", "gso")


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeIntInRange(0, 3) == 0:
        try:
            doc = yaml.safe_load(fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes()))
        except (yaml.YAMLError, RecursionError):
            return      # load_file: "--config is not valid YAML/JSON"
    else:
        doc = harness.mutate(fdp, BASES[fdp.ConsumeIntInRange(0, len(BASES) - 1)], WORDS, edits=5)
    try:
        if not isinstance(doc, dict):
            raise ConfigError("--config", "must hold a mapping at the top level")   # as load_file
        loaded = settings.load(doc)
        filters.compile(loaded.filters)
    except ConfigError:
        return


if __name__ == "__main__":
    harness.main(test_one_input)
