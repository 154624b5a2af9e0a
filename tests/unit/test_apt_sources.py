"""scripts/lib/apt_sources.py: the build scripts' apt sources come from the machine's configuration."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from types import ModuleType

import pytest

PATH = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "lib" / "apt_sources.py"


@pytest.fixture(scope="module")
def apt() -> ModuleType:
    spec = importlib.util.spec_from_file_location("apt_sources", PATH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Enabled: no

Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main
Signed-By: /usr/share/keyrings/nodesource.gpg
"""

ONE_LINE = """\
# a comment
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://proxy.local:3142/debian \
bookworm main
deb-src http://proxy.local:3142/debian bookworm main
deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main
deb http://proxy.local:3142/debian-security bookworm-security main
"""


def write(tmp: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    parts = tmp / "sources.list.d"
    parts.mkdir(parents=True)
    for name, text in files.items():
        (tmp / name if name == "sources.list" else parts / name).write_text(text)
    return tmp


def test_debian_entries_from_both_formats_skipping_disabled_and_third_party(apt: ModuleType,
                                                                            tmp_path: pathlib.Path) -> None:
    etc = write(tmp_path, {"sources.list": ONE_LINE, "debian.sources": DEB822,
                           "old.list.disabled": "deb http://elsewhere/debian bookworm main\n",
                           "podmirror-src.sources": "Types: deb-src\nURIs: http://stale/debian\n"})
    found = apt.debian(apt.configured(str(etc)), lists=str(tmp_path / "no-lists"), release="bookworm")
    assert [(e.uri, e.suite, e.types) for e in found] == [
        ("http://proxy.local:3142/debian", "bookworm", ("deb",)),
        ("http://proxy.local:3142/debian", "bookworm", ("deb-src",)),
        ("http://proxy.local:3142/debian-security", "bookworm-security", ("deb",)),
        ("http://mirror.example/debian", "bookworm", ("deb",)),
        ("http://mirror.example/debian", "bookworm-updates", ("deb",)),
    ]
    src = apt.deb_src_stanzas(found)
    assert "URIs: http://proxy.local:3142/debian\nSuites: bookworm\n" not in src  # has its deb-src already
    assert "Types: deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm-updates\n" \
           "Components: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg" in src
    assert src.count("Types: deb-src") == 3
    assert apt.deb_lines(found).splitlines()[0] == (
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://proxy.local:3142/debian bookworm main")


def test_the_release_file_apt_downloaded_decides_when_there_is_one(apt: ModuleType,
                                                                   tmp_path: pathlib.Path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    entry = apt.Entry(("deb",), "http://user:pw@mirror.example/debian/", "bookworm", ("main",))
    name = apt.list_file_name(entry.uri, entry.suite)
    assert name == "mirror.example_debian_dists_bookworm"
    (lists / f"{name}_InRelease").write_text("-----BEGIN PGP SIGNED MESSAGE-----\nOrigin: Debian\n")
    assert apt.is_debian(entry, str(lists), "bookworm")
    (lists / f"{name}_InRelease").write_text("Origin: Docker\n")
    assert not apt.is_debian(entry, str(lists), "bookworm")  # a third party serving suite "bookworm"


def test_no_debian_source_is_an_error(apt: ModuleType, tmp_path: pathlib.Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    etc = write(tmp_path, {"nodesource.sources": DEB822.split("\n\n")[2]})
    monkeypatch.setenv("APT_SOURCELIST", str(etc / "sources.list"))
    monkeypatch.setenv("APT_SOURCEPARTS", str(etc / "sources.list.d"))
    monkeypatch.setenv("APT_LISTS", str(tmp_path / "lists"))
    assert apt.main(["deb-src"]) == 1 and "no enabled Debian source" in capsys.readouterr().err
    assert apt.main(["nonsense"]) == 2
