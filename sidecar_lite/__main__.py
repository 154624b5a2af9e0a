"""``python -m sidecar_lite`` runs the sidecar (see ``sidecar_lite.cli``)."""

from sidecar_lite.cli import main

raise SystemExit(main())
