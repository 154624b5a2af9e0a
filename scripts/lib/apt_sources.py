"""The machine's enabled Debian apt sources, read from its apt configuration (stdlib only).

Build scripts use them instead of a fixed mirror host, so a machine behind its own mirror or proxy
builds the same way it installs packages:

    apt_sources.py deb-src    deb822 stanzas (Types: deb-src) for every Debian entry that has no
                              deb-src entry yet (empty output: nothing to add), for ``apt-get source``
    apt_sources.py deb        one-line ``deb`` entries of the Debian sources, for ``mmdebstrap``

Read: ``Dir::Etc::sourcelist`` (one-line format) and ``Dir::Etc::sourceparts``'s ``*.list``
(one-line) and ``*.sources`` (deb822), as apt reads them (other file names, such as
``*.disabled``, are ignored by apt and here). Skipped: ``Enabled: no`` stanzas, commented lines,
and entries that are not Debian's. An entry is Debian's when the ``Release`` file apt downloaded for
it says ``Origin: Debian``; before any ``apt-get update`` (no such file), when it is signed by a
``debian-archive`` keyring, or, unsigned, when its suite is the machine's release (``bookworm``,
``bookworm-security``, ...) and its URI path ends in ``/debian`` or ``/debian-security``.
The file this script's callers write (``podmirror-src.sources``) is never read back.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import sys
from collections.abc import Iterable, Sequence

OWN_FILE = "podmirror-src.sources"


@dataclasses.dataclass(frozen=True)
class Entry:
    types: tuple[str, ...]
    uri: str
    suite: str
    components: tuple[str, ...]
    signed_by: str = ""
    options: tuple[tuple[str, str], ...] = ()
    """Other one-line options / deb822 fields (arch=, trusted=), passed on as they are."""


def parse_one_line(text: str) -> list[Entry]:
    entries = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        if kind not in ("deb", "deb-src"):
            continue
        options: list[tuple[str, str]] = []
        rest = rest.strip()
        if rest.startswith("["):
            inside, _, rest = rest[1:].partition("]")
            for item in inside.split():
                key, _, value = item.partition("=")
                options.append((key.lower(), value))
        words = rest.split()
        if len(words) < 2:
            continue
        signed = next((v for k, v in options if k == "signed-by"), "")
        others = tuple((k, v) for k, v in options if k != "signed-by")
        entries.append(Entry((kind,), words[0], words[1], tuple(words[2:]), signed, others))
    return entries


def _stanzas(text: str) -> Iterable[dict[str, str]]:
    fields: dict[str, str] = {}
    key = ""
    for raw in text.splitlines() + [""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                yield fields
            fields, key = {}, ""
        elif raw[0] in " \t" and key:
            fields[key] += "\n" + raw.strip()  # continuation (an inline Signed-By key block)
        else:
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()


def parse_deb822(text: str) -> list[Entry]:
    entries = []
    for fields in _stanzas(text):
        if fields.get("enabled", "yes").lower() in ("no", "false", "0"):
            continue
        types = tuple(t for t in fields.get("types", "").split() if t in ("deb", "deb-src"))
        others = tuple((k, v) for k, v in fields.items()
                       if k in ("architectures", "trusted", "languages"))
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                if types:
                    entries.append(Entry(types, uri, suite, tuple(fields.get("components", "").split()),
                                         fields.get("signed-by", ""), others))
    return entries


def _read(path: str) -> str:
    with open(path, errors="replace") as handle:
        return handle.read()


def configured(etc: str = "/etc/apt", sourcelist: str = "sources.list",
               sourceparts: str = "sources.list.d") -> list[Entry]:
    def under(path: str) -> str:
        return path if path.startswith("/") else os.path.join(etc, path)

    entries: list[Entry] = []
    main = under(sourcelist)
    if os.path.isfile(main):
        entries += parse_one_line(_read(main))
    for path in sorted(glob.glob(os.path.join(under(sourceparts), "*"))):
        name = os.path.basename(path)
        if name == OWN_FILE or not os.path.isfile(path):
            continue
        if name.endswith(".list"):
            entries += parse_one_line(_read(path))
        elif name.endswith(".sources"):
            entries += parse_deb822(_read(path))
    return entries


def list_file_name(uri: str, suite: str) -> str:
    """apt's file name for a suite's Release file in ``Dir::State::lists`` (URItoFileName)."""
    stripped = re.sub(r"^[a-z+]+://", "", uri).rstrip("/")
    stripped = re.sub(r"^[^@/]*@", "", stripped)  # user:password@
    return f"{stripped}/dists/{suite}".replace("%", "%25").replace("~", "%7e").replace("/", "_")


def release_origin(entry: Entry, lists: str) -> str | None:
    base = os.path.join(lists, list_file_name(entry.uri, entry.suite))
    for suffix in ("_InRelease", "_Release"):
        try:
            with open(base + suffix, errors="replace") as handle:
                for line in handle:
                    if line.startswith("Origin:"):
                        return line.split(":", 1)[1].strip()
                    if not line.strip() and suffix == "_Release":
                        break
        except OSError:
            continue
    return None


def codename(os_release: str = "/etc/os-release") -> str:
    try:
        for line in _read(os_release).splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def is_debian(entry: Entry, lists: str, release: str) -> bool:
    origin = release_origin(entry, lists)
    if origin is not None:
        return origin == "Debian"
    if entry.signed_by:
        return "debian-archive" in entry.signed_by
    path = re.sub(r"^[a-z+]+://[^/]*", "", entry.uri).rstrip("/")
    suite_ok = bool(release) and (entry.suite == release or entry.suite.startswith(release + "-"))
    return suite_ok and (path.endswith("/debian") or path.endswith("/debian-security"))


def debian(entries: Sequence[Entry], lists: str, release: str) -> list[Entry]:
    return [e for e in entries if is_debian(e, lists, release)]


def deb_src_stanzas(entries: Sequence[Entry]) -> str:
    """deb822 ``deb-src`` stanzas for the ``deb`` entries that lack one (same URI and suite)."""
    have = {(e.uri.rstrip("/"), e.suite) for e in entries if "deb-src" in e.types}
    out: list[str] = []
    seen: set[tuple[str, str]] = set()
    for e in entries:
        key = (e.uri.rstrip("/"), e.suite)
        if "deb" not in e.types or key in have or key in seen:
            continue
        seen.add(key)
        lines = ["Types: deb-src", f"URIs: {e.uri}", f"Suites: {e.suite}",
                 f"Components: {' '.join(e.components)}"]
        if e.signed_by:
            lines.append("Signed-By: " + e.signed_by.replace("\n", "\n "))
        out.append("\n".join(lines))
    return "\n\n".join(out) + ("\n" if out else "")


def deb_lines(entries: Sequence[Entry]) -> str:
    out = []
    for e in entries:
        if "deb" not in e.types:
            continue
        options = list(e.options)
        if e.signed_by and "\n" not in e.signed_by:
            options.append(("signed-by", e.signed_by))
        prefix = " [" + " ".join(f"{k}={v}" for k, v in options) + "]" if options else ""
        out.append(f"deb{prefix} {e.uri} {e.suite} {' '.join(e.components)}".rstrip())
    return "\n".join(out) + ("\n" if out else "")


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("deb", "deb-src"):
        print("usage: apt_sources.py deb|deb-src", file=sys.stderr)
        return 2
    env = os.environ
    entries = configured(env.get("APT_ETC", "/etc/apt"), env.get("APT_SOURCELIST", "sources.list"),
                         env.get("APT_SOURCEPARTS", "sources.list.d"))
    found = debian(entries, env.get("APT_LISTS", "/var/lib/apt/lists"), env.get("APT_RELEASE", codename()))
    if not found:
        print("apt_sources.py: no enabled Debian source in the apt configuration", file=sys.stderr)
        return 1
    sys.stdout.write(deb_src_stanzas(found) if argv[0] == "deb-src" else deb_lines(found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
