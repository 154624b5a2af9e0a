"""The one error type for input we cannot parse."""


class Malformed(ValueError):
    """Raised by a decoder for input it cannot parse; the message names the layer and the fault."""
