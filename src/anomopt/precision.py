"""The one precision type: what an artifact computes in (``int8``, ``fp16``, ``fp32``).

Torch-free (the runtime reads ``meta.json``'s ``precision`` with it). Everything else that names a
precision (target specs, pipelines, lowering, the CLI's ``--bits``) goes through :class:`Precision`.
"""

from __future__ import annotations

from enum import Enum

from anomopt.errors import ConfigError


class Precision(str, Enum):
    """A deployable precision; the value is the name written into artifacts and pipeline file names."""

    INT8 = "int8"
    FP16 = "fp16"
    FP32 = "fp32"

    @property
    def bits(self) -> int:
        """``Precision.INT8.bits == 8``."""
        return _BITS[self]

    @property
    def label(self) -> str:
        """Upper-case form for messages and tables (``INT8``)."""
        return self.value.upper()

    @classmethod
    def from_bits(cls, bits: int) -> Precision:
        """``8`` -> ``Precision.INT8``; other bit widths raise :class:`ConfigError`."""
        for precision, b in _BITS.items():
            if b == bits:
                return precision
        raise ConfigError(f"bits must be 8, 16 or 32, not {bits}")

    @classmethod
    def parse(cls, text: str | int | Precision) -> Precision:
        """Accept a precision, its name (``int8``, any case) or its bits (``8``, ``"8"``)."""
        if isinstance(text, Precision):
            return text
        if isinstance(text, int):
            return cls.from_bits(text)
        key = str(text).strip().lower()
        if key.isdigit():
            return cls.from_bits(int(key))
        try:
            return cls(key)
        except ValueError:
            raise ConfigError(f"precision must be 8, 16 or 32 (or int8, fp16, fp32), not {text!r}") from None

    def __str__(self) -> str:
        return self.value


_BITS = {Precision.INT8: 8, Precision.FP16: 16, Precision.FP32: 32}

#: the names, as written into ``meta.json``
PRECISION_NAMES: tuple[str, ...] = tuple(p.value for p in Precision)

__all__ = ["PRECISION_NAMES", "Precision"]
