"""The sidecar-injection admission webhook.

- ``inject``: pure; which pods get the sidecar and the JSON Patch that adds it (shared with the
  offline ``nodeagent inject`` command).
- ``review``: pure; AdmissionReview request -> AdmissionReview response. Never denies: a pod the
  webhook cannot handle is admitted unchanged (with ``failurePolicy: Ignore`` an outage admits too).
- ``certs``: pure; a self-made CA and serving certificate when cert-manager is absent.
- ``server``: the aiohttp TLS server and the caBundle patch at start-up.
- ``cli``: ``nodeagent webhook`` and the injector options shared with ``nodeagent inject``.
"""
