"""Target ``records``: a raw batch body through ``decode_records`` (``fuzz_transport.test_records``)."""

from __future__ import annotations

from tests.fuzz import harness
from tests.fuzz.fuzz_transport import test_records

if __name__ == "__main__":
    harness.main(test_records)
