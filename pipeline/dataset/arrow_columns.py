"""Arrow arrays from NumPy arrays and Python lists without ``pa.array``, which imports pandas.

``pa.array`` asks pyarrow's pandas shim whether its input is a pandas object, and the
first such question imports pandas: 0.2 s of every extraction process (the CLI, each Ray
worker) for tables of a few dozen rows. These builders assemble the arrays from buffers
for the types the schemas use (bool, integers, floats, string, list<float64>, timestamps
in UTC); anything else (another type, a value of the wrong kind) goes to ``pa.array``,
which also raises the usual errors.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

_NUMPY_TYPES: dict[pa.DataType, np.dtype] = {
    pa.int8(): np.dtype(np.int8), pa.int16(): np.dtype(np.int16), pa.int32(): np.dtype(np.int32),
    pa.int64(): np.dtype(np.int64), pa.float32(): np.dtype(np.float32), pa.float64(): np.dtype(np.float64),
}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def numpy_array(values: np.ndarray, type: pa.DataType | None = None) -> pa.Array:
    """A 1-D NumPy array (bool or numeric, no nulls) as an Arrow array of its own type, or of ``type``."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"numpy_array takes a 1-D array, not shape {values.shape}")
    if values.dtype == np.bool_:
        if type not in (None, pa.bool_()):
            return pa.array(values, type=type)
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, _bits(values)])
    arrow = pa.from_numpy_dtype(values.dtype)
    if type is not None and type != arrow:
        if type in _NUMPY_TYPES:
            converted = values.astype(_NUMPY_TYPES[type])
            if np.issubdtype(values.dtype, np.integer) and not np.array_equal(converted, values):
                raise OverflowError(f"values do not fit {type}")
            values, arrow = converted, type
        else:
            return pa.array(values, type=type)
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(arrow, len(values), [None, pa.py_buffer(values)])


def dictionary_constant(value: str, n: int) -> pa.DictionaryArray:
    """``n`` copies of one string as a dictionary<int32, string> array (one dictionary entry)."""
    return pa.DictionaryArray.from_arrays(numpy_array(np.zeros(n, dtype=np.int32)), string_array([value]))


def string_array(values: Sequence[str | None]) -> pa.Array:
    """A string array from Python strings (None is null)."""
    column = _strings(values)
    if column is None:
        return pa.array(list(values), type=pa.string())
    return column


def column_array(values: object, type: pa.DataType) -> pa.Array:
    """``values`` (a NumPy array or a sequence of Python values, None for null) as an Arrow array of ``type``."""
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "biuf":
        return numpy_array(values, type)
    if not isinstance(values, (list, tuple)):
        return pa.array(values, type=type)
    built = None
    if type == pa.string():
        built = _strings(values)
    elif type == pa.bool_():
        built = _booleans(values)
    elif type in _NUMPY_TYPES:
        built = _numbers(values, type)
    elif pa.types.is_timestamp(type):
        built = _timestamps(values, type)
    elif pa.types.is_list(type) and type.value_type == pa.float64():
        built = _float_lists(values, type)
    return built if built is not None else pa.array(list(values), type=type)


def _bits(flags: np.ndarray) -> pa.Buffer:
    return pa.py_buffer(np.packbits(flags.astype(np.bool_, copy=False), bitorder="little"))


def _validity(values: Sequence[object]) -> tuple[pa.Buffer | None, np.ndarray | None]:
    present = np.fromiter((v is not None for v in values), dtype=np.bool_, count=len(values))
    if present.all():
        return None, None
    return _bits(present), present


def _numbers(values: Sequence[object], type: pa.DataType) -> pa.Array | None:
    floating = pa.types.is_floating(type)
    kinds = (int, float) if floating else (int,)
    if not all(v is None or (isinstance(v, kinds) and not isinstance(v, bool)) for v in values):
        return None  # NumPy scalars, bools, strings, ...: pa.array decides (and raises)
    validity, present = _validity(values)
    filled = [v if v is not None else 0 for v in values] if present is not None else values
    dtype = _NUMPY_TYPES[type]
    if not floating:
        info = np.iinfo(dtype)
        if any(not info.min <= v <= info.max for v in filled):
            return None
    data = np.array(filled, dtype=dtype) if len(filled) else np.zeros(0, dtype=dtype)
    return pa.Array.from_buffers(type, len(values), [validity, pa.py_buffer(data)])


def _booleans(values: Sequence[object]) -> pa.Array | None:
    if not all(v is None or isinstance(v, (bool, np.bool_)) for v in values):
        return None
    validity, _ = _validity(values)
    flags = np.fromiter((bool(v) for v in values), dtype=np.bool_, count=len(values))
    return pa.Array.from_buffers(pa.bool_(), len(values), [validity, _bits(flags)])


def _strings(values: Sequence[object]) -> pa.Array | None:
    if not all(v is None or isinstance(v, str) for v in values):
        return None
    encoded = [v.encode() if v is not None else b"" for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    if offsets[-1] >= 2**31:
        return None
    validity, _ = _validity(values)
    return pa.Array.from_buffers(pa.string(), len(values), [validity, pa.py_buffer(offsets.astype(np.int32)),
                                                            pa.py_buffer(b"".join(encoded))])


def _timestamps(values: Sequence[object], type: pa.TimestampType) -> pa.Array | None:
    if not type.tz or not all(v is None or (isinstance(v, dt.datetime) and v.tzinfo is not None) for v in values):
        return None  # naive datetimes or a zone-less type: pa.array's rules
    scale = _PER_SECOND[type.unit]
    ticks = []
    for v in values:
        if v is None:
            ticks.append(0)
            continue
        delta = v - _EPOCH
        ticks.append((delta.days * 86_400 + delta.seconds) * scale + delta.microseconds * scale // 1_000_000)
    validity, _ = _validity(values)
    return pa.Array.from_buffers(type, len(values), [validity, pa.py_buffer(np.array(ticks, dtype=np.int64))])


def _float_lists(values: Sequence[object], type: pa.ListType) -> pa.Array | None:
    if not all(v is None or (isinstance(v, (list, tuple)) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)) for v in values):
        return None  # inner nulls, arrays, ...
    lengths = [len(v) if v is not None else 0 for v in values]
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.array([x for v in values if v is not None for x in v], dtype=np.float64)
    validity, _ = _validity(values)
    inner = pa.Array.from_buffers(pa.float64(), len(flat), [None, pa.py_buffer(flat)])
    return pa.Array.from_buffers(type, len(values), [validity, pa.py_buffer(offsets)], children=[inner])
