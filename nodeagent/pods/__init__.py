"""Who is who: the monitored pods the agent knows, by tunnel source and by address.

- ``index``: ``PodInfo`` (a pod's addresses, VNI, identity, container ports) and ``PodIndex``, the
  table the pipeline looks senders and peers up in (pure dict hits on the packet path);
- ``kube``: Kubernetes pod objects -> ``PodInfo``: which pods are monitored, their addresses, and
  which of them are silent (pure; ``adapters/kube.py`` feeds it from the API's watch).

The static configuration (``--sender``, ``--peer``) fills the same ``PodIndex``.
"""
