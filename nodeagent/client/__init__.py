"""Commands operators run against agents: ``nodeagent capture`` and ``nodeagent status``.

``agents`` finds the agents to talk to (through the Kubernetes API: the selected pods, their
nodes, the agent pod on each node; or ``--agent URL`` without Kubernetes); ``merge`` merges
several agents' pcapng streams into one in timestamp order (pure); ``capture_cmd`` and
``status_cmd`` are the subcommands (also ``kubectl podmirror ...``: ``cli.kubectl_plugin``).
"""
