"""The agent's packet work: one ``Worker`` in the agent's process, or N worker processes.

``nodeagent run --workers N`` (default ``auto``: the CPUs the pod may use, ``cores``) receives the
sidecars' tunnels in N processes, each running the whole pipeline and its own outputs
(``worker.Worker``), so N CPUs work at once. The kernel steers the datagrams: the tunnel port is
a SO_REUSEPORT group of N sockets with a classic BPF program that reads the *inner* packet and
sends every copy of a flow (both vantages, both directions, DNAT'd or not) to one worker, and
everything without ports to worker 0 (``adapters/steering.py`` argues the key and says when it is
exact). So the per-flow and per-packet state of the pipeline (vantage, dedup, cutoff) needs no
sharing between workers, and a worker is the same code as the single-process agent. The one
node-wide fact the pipeline uses, each pod's liveness (when its tunnel last delivered), is shared:
workers report it to the supervisor, which relays it (``child.report_seen``, ``docs/dedup.md``).

The supervisor (``app.Agent`` with a ``pool.WorkerPool``) owns what is one per node: the sockets
(so a worker can die and come back to its flows), the status server (one ``/status`` and one
``/metrics``, summed over the workers by ``merge``, per-worker figures under ``workers``), the pod
table and its one Kubernetes watch (changes pushed to the workers), push-down, and the capture
relay (``relay``). Supervisor and worker talk over a unix socketpair (``channel``).

With ``--workers 1`` the one worker runs inside the agent's process, as the tests' in-process
``Agent`` does: no child process, no reuseport group.
"""
