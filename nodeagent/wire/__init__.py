"""Wire formats: pure decoders and encoders over ``memoryview`` (no I/O, no allocation beyond results)."""

from nodeagent.wire.errors import Malformed

__all__ = ["Malformed"]
