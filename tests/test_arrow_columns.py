"""The pandas-free Arrow builders equal pa.array on every type the schemas use, and extraction imports no pandas."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.dataset.arrow_columns import (
    column_array,
    dictionary_constant,
    numpy_array,
    string_array,
)
from pipeline.dataset.schema import TABLES, arrow_schema, to_table

UTC = dt.timezone.utc
CASES = [
    (pa.string(), ["a", None, "ünï", "", "x" * 1000]),
    (pa.string(), []),
    (pa.bool_(), [True, False, None, True, True, False, False, False, True]),
    (pa.bool_(), [np.bool_(True), False]),
    (pa.int32(), [0, -2**31, 2**31 - 1, None, 7]),
    (pa.int64(), [2**62, None, -1]),
    (pa.int16(), [1, 2, None]),
    (pa.float64(), [0.1, None, float("nan"), float("inf"), -0.0, 3, 1e-308]),
    (pa.float32(), [0.1, 1.5, None]),
    (pa.list_(pa.float64()), [[0.1, 2.0], None, [], [float("nan"), 5]]),
    (pa.timestamp("us", tz="UTC"), [dt.datetime(2026, 12, 2, 21, 30, 1, 123456, tzinfo=UTC), None,
                                    dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                                    dt.datetime(2026, 1, 1, 3, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))]),
    (pa.timestamp("ms", tz="UTC"), [dt.datetime(2026, 12, 2, 21, 30, 1, 123456, tzinfo=UTC)]),
    (pa.float64(), [None, None]),
]


@pytest.mark.parametrize(("type_", "values"), CASES, ids=[f"{t}-{i}" for i, (t, _) in enumerate(CASES)])
def test_column_array_equals_pa_array(type_: pa.DataType, values: list) -> None:
    built = column_array(values, type_)
    expected = pa.array(values, type=type_)
    built.validate(full=True)
    assert built.type == expected.type
    assert built.null_count == expected.null_count
    assert built.to_pylist() == expected.to_pylist() or _same_with_nan(built, expected)
    assert built.equals(expected) or _same_with_nan(built, expected)


def _same_with_nan(a: pa.Array, b: pa.Array) -> bool:
    """Equal values where NaN equals NaN (Array.equals says NaN != NaN)."""
    return json.dumps(a.to_pylist(), default=str) == json.dumps(b.to_pylist(), default=str)


@pytest.mark.parametrize(("type_", "values"), [
    (pa.int32(), [2**31]),  # overflow
    (pa.int32(), ["1"]),  # wrong kind
    (pa.string(), [1]),
    (pa.bool_(), ["yes"]),
])
def test_values_pa_array_refuses_are_refused_the_same_way(type_: pa.DataType, values: list) -> None:
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError)) as expected:
        pa.array(values, type=type_)
    with pytest.raises(expected.type):
        column_array(values, type_)


def test_numpy_arrays_keep_their_bytes() -> None:
    floats = np.random.default_rng(0).standard_normal(1001).astype(np.float32)
    assert numpy_array(floats).to_numpy().tobytes() == floats.tobytes()
    assert numpy_array(floats).type == pa.float32()
    flags = np.random.default_rng(1).random(77) < 0.3
    assert numpy_array(flags).to_pylist() == flags.tolist()
    assert numpy_array(np.arange(5, dtype=np.int64), pa.int32()).type == pa.int32()
    with pytest.raises(OverflowError):
        numpy_array(np.array([2**40]), pa.int32())
    strided = np.arange(20, dtype=np.int32)[::3]
    assert numpy_array(strided).to_pylist() == strided.tolist()
    assert dictionary_constant("m/x", 4).to_pylist() == ["m/x"] * 4
    assert string_array(["a", None]).to_pylist() == ["a", None]


def test_to_table_of_every_schema_equals_the_pa_array_build() -> None:
    """One row of every table, all columns given: the same table as building each column with pa.array."""
    samples = {"string": "v", "bool": True, "int32": 3, "int64": 2**40, "double": 0.25, "float": 0.5,
               "list<item: double>": [1.0, 0.5], "timestamp[us, tz=UTC]": dt.datetime(2026, 12, 2, tzinfo=UTC)}
    for table in TABLES:
        schema = arrow_schema(table)
        columns = {f.name: [samples[str(f.type)], None if f.nullable else samples[str(f.type)]] for f in schema
                   if str(f.type) in samples}
        built = to_table(table, columns)
        expected = pa.Table.from_arrays([pa.array(columns[f.name], type=f.type) if f.name in columns
                                         else pa.nulls(2, f.type) for f in schema], schema=schema)
        assert built.equals(expected), table


def test_extraction_imports_no_pandas(tmp_path: Path) -> None:
    """A whole `filterlens extract` process never imports pandas (0.2 s of start-up it does not need)."""
    import torch

    checkpoint = tmp_path / "m.pt"
    torch.manual_seed(0)
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3)).state_dict(),
               checkpoint)
    code = ("import sys, json\nfrom pipeline.cli.main import main\n"
            f"code = main(['extract', {str(checkpoint)!r}, '--out', {str(tmp_path / 'ds')!r}, '--dataset', 'cifar10'])\n"
            "print(json.dumps([code, 'pandas' in sys.modules]), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == [0, False], proc.stderr
    import pyarrow.parquet as pq

    layers = pq.read_table(next((tmp_path / "ds" / "layers").rglob("*.parquet")))
    assert layers.column("n_filters").to_pylist() == [24, 32]
