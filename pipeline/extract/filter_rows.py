"""Rows of the filters table for one 3x3 layer, as an Arrow record batch (no pandas)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from pipeline.dataset.arrow_columns import dictionary_constant, numpy_array
from pipeline.dataset.layout import filters_write_schema
from pipeline.extract.metrics import filter_columns, flatten_filters


def filter_batch(model_id: str, dataset: str, slug: str, conv_index: int, weight: torch.Tensor,
                 sparse: torch.Tensor, member: int = 0, columns: torch.Tensor | None = None) -> pa.RecordBatch:
    """Rows of the filters table for one 3x3 layer (weights exact as float32) of ensemble member ``member``.

    ``columns``: the layer's ``filter_columns`` (9, n) when the metrics made them, else they are made here.
    """
    c_out, c_in = int(weight.shape[0]), int(weight.shape[1])
    n = c_out * c_in
    if columns is None:
        columns = filter_columns(flatten_filters(weight.detach()))
    by_position = columns.to("cpu", torch.float32).contiguous().numpy()  # 9 contiguous columns
    arrays = {
        "model_id": dictionary_constant(model_id, n),
        "dataset": dictionary_constant(dataset, n),
        "model": dictionary_constant(slug, n),
        "member": numpy_array(np.full(n, member, dtype=np.int32)),
        "conv_index": numpy_array(np.full(n, conv_index, dtype=np.int32)),
        "out_channel": numpy_array(np.repeat(np.arange(c_out, dtype=np.int32), c_in)),
        "in_channel": numpy_array(np.tile(np.arange(c_in, dtype=np.int32), c_out)),
        "sparse": numpy_array(sparse.detach().cpu().numpy().astype(bool, copy=False)),
    }
    for k in range(9):
        arrays[f"w{k}"] = numpy_array(by_position[k])
    schema = filters_write_schema()
    return pa.RecordBatch.from_arrays([arrays[name] for name in schema.names], schema=schema)
