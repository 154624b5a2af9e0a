from __future__ import annotations

import pytest

from sidecar_lite import identity


def test_vni_is_the_low_24_bits_of_the_pod_address() -> None:
    assert identity.vni_for_address("10.244.3.17") == (244 << 16) | (3 << 8) | 17


def test_pods_of_one_slash_8_get_distinct_vnis() -> None:
    assert identity.vni_for_address("10.1.2.3") != identity.vni_for_address("10.1.2.4")


def test_non_ipv4_is_refused() -> None:
    with pytest.raises(ValueError):
        identity.vni_for_address("fd00::1")


@pytest.mark.parametrize(
    "text, hex_default, expected",
    [("42", False, 42), ("0x2a", False, 42), ("2a", True, 42), ("0X2A", True, 42), ("auto", False, None),
     (" AUTO ", True, None), ("16777215", False, 16777215)],
)
def test_vni_spellings(text: str, hex_default: bool, expected: int | None) -> None:
    assert identity.parse_vni(text, hex_default=hex_default) == expected


@pytest.mark.parametrize("text", ["16777216", "-1", "zz", ""])
def test_bad_vni_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        identity.parse_vni(text)
