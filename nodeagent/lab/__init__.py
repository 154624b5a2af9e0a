"""The local lab: a Kubernetes-like node built from network namespaces (``nodeagent lab``).

``topology`` builds namespaces, veths, routes and addresses (``Lab``); ``netns`` runs and cleans up;
``podmirror`` starts the agent and sidecars inside it; ``traffic`` drives real workloads (HTTP, DNS,
TLS, ICMP, iperf3); ``capture`` records ground truth and decodes pcaps with tshark; ``runner`` is
the ``nodeagent lab`` command. Tests and benchmarks import ``Lab`` directly. Needs root.
"""
