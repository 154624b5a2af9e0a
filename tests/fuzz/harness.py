"""What every target shares: atheris set-up, and JSON-like values built from fuzz input.

A target module does, in this order (instrumentation must wrap the first import of the code under
test, so nothing from ``nodeagent`` or ``sidecar_lite`` may be imported before it)::

    from tests.fuzz import harness
    with harness.instrumented():
        from nodeagent.wire import headers
    def test_one_input(data: bytes) -> None: ...
    if __name__ == "__main__":
        harness.main(test_one_input)

The check of a target is its invariant: an exception other than the documented error types, an
assertion, a libFuzzer timeout (``-timeout``) or RSS limit (``-rss_limit_mb``) is a finding.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import atheris

JSON = Any


def instrumented() -> Any:
    """Coverage instrumentation for podmirror's own modules (not numpy, zstandard, yaml...)."""
    return atheris.instrument_imports(include=["nodeagent", "sidecar_lite"])


def main(test_one_input: Callable[[bytes], None]) -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def value(fdp: atheris.FuzzedDataProvider, words: Sequence[str], depth: int = 3) -> JSON:
    """A JSON-like value: scalars of every type, strings mostly from ``words`` (the field names and
    values the parser looks for), lists and mappings down to ``depth``."""
    kind = fdp.ConsumeIntInRange(0, 9 if depth > 0 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeIntInRange(-(2**64), 2**64)
    if kind == 3:
        return fdp.ConsumeIntInRange(-2, 70000)
    if kind == 4:
        return fdp.ConsumeFloat()
    if kind in (5, 6):
        return word(fdp, words)
    if kind == 7:
        return [value(fdp, words, depth - 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    return {word(fdp, words): value(fdp, words, depth - 1) for _ in range(fdp.ConsumeIntInRange(0, 4))}


def word(fdp: atheris.FuzzedDataProvider, words: Sequence[str]) -> str:
    if fdp.ConsumeIntInRange(0, 3):
        return str(words[fdp.ConsumeIntInRange(0, len(words) - 1)])
    return str(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40)))


def mutate(fdp: atheris.FuzzedDataProvider, doc: JSON, words: Sequence[str], edits: int = 4) -> JSON:
    """``doc`` (a valid example) with up to ``edits`` subtrees replaced, deleted or added: deep
    paths stay reachable, which random values alone would rarely build."""
    for _ in range(fdp.ConsumeIntInRange(0, edits)):
        doc = _edit(fdp, doc, words)
    return doc


def _edit(fdp: atheris.FuzzedDataProvider, node: JSON, words: Sequence[str]) -> JSON:
    children = list(node.items()) if isinstance(node, dict) else list(enumerate(node)) \
        if isinstance(node, list) else []
    if not children or fdp.ConsumeIntInRange(0, 3) == 0:
        return value(fdp, words)
    key, child = children[fdp.ConsumeIntInRange(0, len(children) - 1)]
    action = fdp.ConsumeIntInRange(0, 5)
    if action == 0 and isinstance(node, dict):
        node = dict(node)
        del node[key]
    elif action == 1 and isinstance(node, dict):
        node = {**node, word(fdp, words): value(fdp, words)}
    elif isinstance(node, dict):
        node = {**node, key: _edit(fdp, child, words)}
    else:
        node = [*node[:key], _edit(fdp, child, words), *node[key + 1:]]
    return node
