"""msgpack with numpy arrays, wire-compatible with `openpi_client.msgpack_numpy`.

An array travels as a map `{b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str, b"shape": [...]}`
and a numpy scalar as `{b"__npgeneric__": True, b"data": value, b"dtype": dtype.str}`, the layout openpi's
client and server both speak. Decoding never unpickles: object, void and complex dtypes are refused, and a
buffer whose size does not match its declared shape is an error rather than a crash deep in numpy.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

# Kinds that would need pickling (object), carry arbitrary structs (void), or that no robot action needs.
_REFUSED_KINDS = frozenset("VOc")
ARRAY_TAG = b"__ndarray__"
SCALAR_TAG = b"__npgeneric__"


class DecodeError(ValueError):
    """A message that is not valid msgpack-numpy; the text says what is wrong."""


def _encode(obj: Any) -> Any:
    """msgpack `default` hook: numpy arrays and scalars to tagged maps."""
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in _REFUSED_KINDS:
        raise TypeError(f"cannot send numpy dtype {obj.dtype} (object, void and complex dtypes are refused)")
    if isinstance(obj, np.ndarray):
        array = np.ascontiguousarray(obj)
        return {ARRAY_TAG: True, b"data": array.tobytes(), b"dtype": array.dtype.str, b"shape": list(array.shape)}
    if isinstance(obj, np.generic):
        return {SCALAR_TAG: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot msgpack an object of type {type(obj).__name__}")


def _checked_dtype(raw: Any) -> np.dtype:
    if not isinstance(raw, (str, bytes)):
        raise DecodeError(f"array dtype must be a string, got {type(raw).__name__}")
    try:
        dtype = np.dtype(raw.decode() if isinstance(raw, bytes) else raw)
    except TypeError as exc:
        raise DecodeError(f"unknown array dtype {raw!r}") from exc
    if dtype.kind in _REFUSED_KINDS:
        raise DecodeError(f"array dtype {dtype} is refused (object, void and complex dtypes are not accepted)")
    return dtype


def _decode_array(obj: dict) -> np.ndarray:
    dtype = _checked_dtype(obj.get(b"dtype"))
    data, shape = obj.get(b"data"), obj.get(b"shape")
    if not isinstance(data, bytes):
        raise DecodeError("array data must be bytes")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise DecodeError(f"array shape must be a list of non-negative ints, got {shape!r}")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected != len(data):
        raise DecodeError(f"array of shape {list(shape)} and dtype {dtype} needs {expected} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _decode(obj: dict) -> Any:
    """msgpack `object_hook`: tagged maps back to numpy arrays and scalars."""
    if ARRAY_TAG in obj:
        return _decode_array(obj)
    if SCALAR_TAG in obj:
        return _decode_scalar(obj)
    return obj


def packb(obj: Any) -> bytes:
    """Serialise `obj` (dicts, lists, str, numbers, numpy arrays and scalars) to msgpack bytes."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def _decode_scalar(obj: dict) -> np.generic:
    dtype = _checked_dtype(obj.get(b"dtype"))
    try:
        return dtype.type(obj.get(b"data"))
    except (OverflowError, ValueError, TypeError) as exc:  # numpy 2: np.uint8(300) raises OverflowError
        raise DecodeError(f"numpy scalar of dtype {dtype} cannot hold {str(obj.get(b'data'))[:40]}: "
                          f"{type(exc).__name__}") from exc


def unpackb(data: bytes, max_map_len: int = -1) -> Any:
    """Deserialise msgpack bytes; raises `DecodeError` naming the problem for anything malformed.

    `max_map_len` (-1: msgpack's own bound, the buffer size) refuses a map with more entries while decoding,
    before any per-key work: a server passes its key cap so a 37,000-key request costs almost nothing."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected a binary msgpack frame, got {type(data).__name__}")
    try:
        return msgpack.unpackb(bytes(data), object_hook=_decode, raw=False, max_map_len=max_map_len)
    except DecodeError:
        raise
    # msgpack's own errors (bad format, truncated input, extra data, bad utf-8, non-str map keys, a map over
    # max_map_len) are all ValueErrors; unhashable keys surface as TypeError.
    except (ValueError, TypeError, OverflowError) as exc:
        if "exceeds max_map_len" in str(exc):
            raise DecodeError(f"a map has {str(exc).split()[0]} entries, at most {max_map_len} are accepted") from exc
        raise DecodeError(f"not valid msgpack: {str(exc)[:200]}") from exc
