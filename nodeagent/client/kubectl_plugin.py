"""``kubectl-podmirror``: the kubectl plugin entry point (``kubectl podmirror capture -n shop -l app=web``).

kubectl runs any executable named ``kubectl-<name>`` on the PATH for ``kubectl <name> ...``, with
the remaining arguments; installing podmirror puts this one next to ``nodeagent``. Only the
operator commands are offered: ``capture`` and ``status``. kubectl passes its own flags through
only when given after the plugin name, so ``--kubeconfig``/``--context`` go after the subcommand.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from nodeagent import cli

COMMANDS = ("capture", "status")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print("usage: kubectl podmirror {capture|status} [options]   (--help after the command)",
              file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    return cli.main(args)
