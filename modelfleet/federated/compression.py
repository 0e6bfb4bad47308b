"""Shrink client updates before they travel: top-k sparsification, uniform low-bit
quantisation and error feedback (FedJob ``spec.compression``).

A client keeps the ``1 - sparsity`` share of entries of largest magnitude, quantises them
with one step per tensor, and sends the result as bytes. What the compressor loses is not
thrown away: :class:`ErrorFeedback` adds it to the next round's update (EF-SGD, Seide et
al. 2014; Karimireddy et al. 2019), so every coordinate eventually arrives.

``len(encode(...))`` is what ``status.bytesSent`` counts, so the count is exact by
construction; :func:`encoded_size` gives the same number in closed form, for planning.

Wire format. A 13-byte little-endian header — value width in bits (u8: 32 for float32,
8 for Int8, 2 for Ternary), entry count n (u32), kept count k (u32), quantisation step
(f32; 0 for float32 values) — then one bit stream, most significant bit first, padded
with zeros to a whole byte:

1. The kept positions, Elias-Fano coded, absent when k is 0 or n. The sorted positions
   are split into ``l = floor(log2(n / k))`` low bits, written as they are, and a high
   part written as unary gaps: bit ``(p_i >> l) + i`` set in ``k + ((n - 1) >> l) + 1``
   bits. That is at most ``2 + ceil(log2(n / k))`` bits per kept entry (5.25 at sparsity
   0.9, against 32 for uint32 positions and 10 for a bitmap), near the minimum of about
   ``log2(n / k) + 1.44`` that any code of k positions among n needs, and, unlike varint
   deltas, its length depends only on n and k.
2. The k values, ``width`` bits each: float32 bit patterns, or the quantisation level
   offset to be non-negative.

Quantisation is uniform and symmetric with ``L = 2**(width - 1) - 1`` levels each side
(127 for Int8, 1 for Ternary) and step ``max|kept| / L`` (a float32, rounded up), so a
kept entry is off by at most half a step and the largest arrives to float32 precision;
a dropped entry is off by its own magnitude, at most the smallest kept one's.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from fractions import Fraction
from typing import Protocol

import numpy as np
import numpy.typing as npt

VALUE_BITS = {"None": 32, "Int8": 8, "Ternary": 2}
"""Bits per kept value on the wire, per ``spec.compression.quantization``."""

HEADER = struct.Struct("<BIIf")
"""Value width in bits, entry count, kept count, quantisation step."""

MAX_ENTRIES = 2**32 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)

Floats = npt.NDArray[np.float32]
Positions = npt.NDArray[np.int64]
Bits = npt.NDArray[np.uint8]


class Compression(Protocol):
    """What ``spec.compression`` says, as the API model or the runtime's plain settings
    carry it; the runtime's processes do not import the API."""

    @property
    def sparsity(self) -> float: ...

    @property
    def quantization(self) -> str: ...


def kept_count(n: int, sparsity: float) -> int:
    """Entries kept of n when ``sparsity`` is the share dropped, rounded down.

    The share is taken as the decimal written in the spec (0.29 of 100 drops 29), not
    its binary float, which would drop 28.
    """
    return n - math.floor(Fraction(repr(sparsity)) * n)


def index_bits(n: int, k: int) -> int:
    """Bits of the Elias-Fano coded positions of k kept entries out of n."""
    if k in (0, n):
        return 0
    low = _low_bits(n, k)
    return k * low + k + ((n - 1) >> low) + 1


def encoded_size(n: int, k: int, bits: int) -> int:
    """Bytes of ``encode`` for k kept entries of n, ``bits`` wide each: the closed form."""
    _check_width(bits)
    if not 0 <= k <= n <= MAX_ENTRIES:
        raise ValueError(f"kept count k={k} must lie in [0, n={n}] and n in [0, {MAX_ENTRIES}]")
    return HEADER.size + math.ceil((index_bits(n, k) + k * bits) / 8)


def encode(update: npt.ArrayLike, compression: Compression) -> bytes:
    """The wire form of one update tensor under ``compression``; see the module docstring."""
    flat = _as_float32(update)
    n = flat.size
    bits = VALUE_BITS[compression.quantization]
    positions = _top_k(flat, kept_count(n, compression.sparsity))
    values = flat[positions]
    if bits == 32:
        step, codes = 0.0, values.view(np.uint32).astype(np.int64)
    else:
        step, codes = _quantise(values, bits)
    stream = np.concatenate([_encode_positions(positions, n), _to_bits(codes, bits)])
    return HEADER.pack(bits, n, positions.size, step) + np.packbits(stream).tobytes()


def decode(payload: bytes, shape: tuple[int, ...]) -> Floats:
    """The float32 update that ``payload`` carries, zero where entries were dropped."""
    if len(payload) < HEADER.size:
        raise ValueError(
            f"payload has {len(payload)} bytes, fewer than the {HEADER.size}-byte header"
        )
    bits, n, k, step = HEADER.unpack_from(payload)
    if n != math.prod(shape):
        raise ValueError(f"payload holds {n} entries but shape {shape} has {math.prod(shape)}")
    expected = encoded_size(n, k, bits)
    if len(payload) != expected:
        raise ValueError(f"payload has {len(payload)} bytes; n={n}, k={k} need {expected}")
    stream = np.unpackbits(np.frombuffer(payload, dtype=np.uint8, offset=HEADER.size))
    split = index_bits(n, k)
    positions = _decode_positions(stream[:split], n, k)
    codes = _from_bits(stream[split : split + k * bits], bits, k)
    dense = np.zeros(n, dtype=np.float32)
    dense[positions] = _dequantise(codes, bits, step)
    return dense.reshape(shape)


class ErrorFeedback:
    """One client's memory of what compression has not delivered yet, per layer.

    Each round the residual is added to the new update before compressing, and what the
    compressor drops or rounds away becomes the next residual. After T rounds the sum of
    what was sent is the sum of the updates minus the current residual. The residual stays
    bounded: no entry is off by more than its magnitude and the largest arrives (both up to
    float32 rounding), so
    ``|x - C(x)|^2 <= (1 - 1/n) |x|^2`` and for a constant update g the residual is at
    most ``rho / (1 - rho) |g|`` with ``rho = sqrt(1 - 1/n)``, whatever the number of
    rounds. Entries that top-k alone would drop forever therefore still arrive. Residuals
    are float64 so that rounding over many rounds does not accumulate in them.
    """

    def __init__(self, compression: Compression) -> None:
        self.compression = compression
        self._residuals: dict[str, npt.NDArray[np.float64]] = {}

    def compress(self, layer: str, update: npt.ArrayLike) -> bytes:
        """The payload for ``layer`` this round, carrying earlier rounds' residual."""
        array = np.asarray(update, dtype=np.float64)
        residual = self._residuals.get(layer, np.zeros_like(array))
        if residual.shape != array.shape:
            raise ValueError(
                f"layer {layer!r}: update shape {array.shape} differs from earlier rounds' "
                f"{residual.shape}; use one ErrorFeedback per adapter layout"
            )
        corrected = array + residual
        payload = encode(corrected, self.compression)
        self._residuals[layer] = corrected - decode(payload, corrected.shape)
        return payload

    def residuals(self) -> dict[str, npt.NDArray[np.float64]]:
        """Copies of the residual per layer, to keep between rounds where the client's
        process does not live on (a Flower node's context)."""
        return {layer: residual.copy() for layer, residual in self._residuals.items()}

    def restore(self, residuals: Mapping[str, npt.ArrayLike]) -> None:
        """Continue from residuals that :meth:`residuals` returned."""
        self._residuals = {
            layer: np.array(value, dtype=np.float64) for layer, value in residuals.items()
        }

    def residual_norm(self) -> float:
        """L2 norm of all layers' residuals together: what is still owed to the server."""
        return math.sqrt(sum(float(np.sum(r * r)) for r in self._residuals.values()))


def _check_width(bits: int) -> None:
    """Reject a value width no quantisation produces (a corrupt or foreign payload)."""
    if bits not in VALUE_BITS.values():
        raise ValueError(f"value width {bits} bits is none of {sorted(VALUE_BITS.values())}")


def _as_float32(update: npt.ArrayLike) -> Floats:
    """The update flattened to float32, the precision on the wire; refuses non-finite."""
    flat = np.asarray(update, dtype=np.float32).ravel()
    if flat.size > MAX_ENTRIES:
        raise ValueError(f"update has {flat.size} entries; split it below {MAX_ENTRIES}")
    if not np.isfinite(flat).all():
        raise ValueError("update has NaN or infinite entries (in float32); fix the training step")
    return flat


def _top_k(flat: Floats, k: int) -> Positions:
    """Sorted positions of the k entries of largest magnitude."""
    if k == flat.size:
        return np.arange(flat.size, dtype=np.int64)
    chosen = np.argpartition(-np.abs(flat), k - 1)[:k] if k else np.empty(0, np.int64)
    return np.sort(chosen).astype(np.int64)


def _levels(bits: int) -> int:
    """Quantisation levels on each side of zero for a ``bits``-wide value."""
    return int(2 ** (bits - 1) - 1)


def _quantise(values: Floats, bits: int) -> tuple[float, npt.NDArray[np.int64]]:
    """Per-tensor step and non-negative level codes, rounding to the nearest level.

    The step is a float32 rounded up if need be, so that ``levels`` steps reach the peak
    and no value rounds past the outermost level.
    """
    levels = _levels(bits)
    peak = float(np.max(np.abs(values), initial=0.0))
    step = float(np.float32(peak / levels))
    if step * levels < peak:
        step = float(np.nextafter(np.float32(step), np.float32(np.inf)))
    if step == 0.0:
        return 0.0, np.full(values.size, levels, dtype=np.int64)
    return step, np.rint(values.astype(np.float64) / step).astype(np.int64) + levels


def _dequantise(codes: npt.NDArray[np.int64], bits: int, step: float) -> Floats:
    """Values from their codes: float32 bit patterns, or levels times the step.

    The rounded-up step can take the outermost level past the largest float32 when the
    peak is within a step of it; such values are clamped to it rather than becoming inf.
    """
    if bits == 32:
        return codes.astype(np.uint32).view(np.float32)
    clamped: npt.NDArray[np.float64] = np.clip(
        (codes - _levels(bits)) * step, -FLOAT32_MAX, FLOAT32_MAX
    )
    return clamped.astype(np.float32)


def _low_bits(n: int, k: int) -> int:
    """Elias-Fano's split: floor(log2(n / k)) low bits written verbatim."""
    return (n // k).bit_length() - 1


def _encode_positions(positions: Positions, n: int) -> Bits:
    """Elias-Fano bits of sorted positions; none when all or no entries are kept."""
    k = positions.size
    if k in (0, n):
        return np.empty(0, dtype=np.uint8)
    low = _low_bits(n, k)
    upper = np.zeros(k + ((n - 1) >> low) + 1, dtype=np.uint8)
    upper[(positions >> low) + np.arange(k)] = 1
    return np.concatenate([_to_bits(positions & ((1 << low) - 1), low), upper])


def _decode_positions(stream: Bits, n: int, k: int) -> Positions:
    """Sorted positions back from their Elias-Fano bits."""
    if k in (0, n):
        return np.arange(k, dtype=np.int64)
    low = _low_bits(n, k)
    ones = np.flatnonzero(stream[k * low :])
    if ones.size != k:
        raise ValueError(f"payload's positions mark {ones.size} entries, not k={k}; corrupt")
    positions = ((ones - np.arange(k)) << low) | _from_bits(stream[: k * low], low, k)
    if positions[-1] >= n:
        raise ValueError(f"payload names position {positions[-1]} of only {n} entries; corrupt")
    return positions


def _to_bits(values: npt.NDArray[np.int64], width: int) -> Bits:
    """The low ``width`` (at most 32) bits of each value, most significant first."""
    as_bytes = values.astype(">u4").view(np.uint8).reshape(-1, 4)
    return np.unpackbits(as_bytes, axis=1)[:, 32 - width :].ravel()


def _from_bits(stream: Bits, width: int, count: int) -> npt.NDArray[np.int64]:
    """``count`` unsigned values of ``width`` bits each, inverse of :func:`_to_bits`."""
    padded = np.zeros((count, 32), dtype=np.uint8)
    padded[:, 32 - width :] = stream.reshape(count, width)
    return np.packbits(padded, axis=1).view(">u4").ravel().astype(np.int64)
