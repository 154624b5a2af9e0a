"""HTTP side of the node agent: ``/status``, ``/healthz``, ``/readyz``, ``/metrics`` (aiohttp).

Handlers read the agent's state and never mutate packet counters. Other parts add their own routes
(``Agent.add_route``), e.g. the push-down endpoint ``/v1/pushdown`` (``pushdown_api``).
"""
