"""The onnxzoo2filterdb layout (Gavrikov & Keuper's data releases and CNN-Filter-DB): names, no I/O.

A release folder holds ``dataset.h5`` and three CSVs, written by the authors'
``create_filter_storage.py``, ``extract_filters.py`` and notebook ``generate_filter_db.ipynb``:

* ``dataset.h5`` / ``filters``: every 3x3 filter, shape (N, 3, 3) (CNN-Filter-DB documents
  (N, 9)), model after model and, within a model, layer after layer; a layer's filters
  are its weight ``w.reshape(-1, 3, 3)``, i.e. ordered by (out_channel, in_channel).
* ``dataset.h5`` / ``meta``: a pandas ``to_hdf`` frame (PyTables), one row per 3x3 layer,
  index (model_id, conv_depth, conv_depth_norm, layer_id), columns ``filter_ids``
  (``"start:end"``, end inclusive), ``layer_depth``, ``in_channels`` (weight dim 1),
  ``out_channels`` and the model's metadata joined in.
* ``filterinfo.csv``: the same layers with ``filter_id_start``, ``filter_id_end`` (exclusive),
  ``model`` (the integer model id), ``layer_id``, ``depth``, ``conv_depth``, ``conv_depth_norm``,
  ``in_channels``, ``out_channels``.
* ``datastorage.meta.csv``: one row per model, its first (unnamed) column the model id, then
  ``model`` (the model's name), ``path``, ``producer``, ``op_set``, operator counts (``Conv``, ...),
  ``"(k, k) filters"`` counts and ``depth``.
* ``meta.csv``: the model spreadsheet (``Name``, ``Paper``, ``Robust``, ``Clean Accuracy``, ...),
  joined to ``datastorage.meta.csv`` on ``model`` = ``Name``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

H5_FILE = "dataset.h5"
FILTERS_KEY = "filters"
FILTERS_KEY_ALIASES = ("filters", "filter")
"""``filters`` as the code writes it; CNN-Filter-DB's README calls it ``/filter``."""
META_KEY = "meta"
FILTERINFO_CSV = "filterinfo.csv"
STORAGE_META_CSV = "datastorage.meta.csv"
SPREADSHEET_CSV = "meta.csv"

META_INDEX = ["model_id", "conv_depth", "conv_depth_norm", "layer_id"]
"""The ``meta`` frame's index levels, in the notebook's order."""
META_LAYER_COLUMNS = ["filter_ids", "layer_depth", "in_channels", "out_channels"]
"""The ``meta`` frame's per-layer columns (everything else is the model's metadata)."""
FILTERINFO_COLUMNS = ["filter_id_start", "filter_id_end", "model", "layer_id", "depth", "conv_depth",
                      "conv_depth_norm", "in_channels", "out_channels"]
"""``filterinfo.csv``'s columns, in the authors' order."""
MODEL_NAME_COLUMN = "model"
"""The model's unique string id (its ONNX file name) in ``datastorage.meta.csv`` and ``meta``."""
SPREADSHEET_NAME_COLUMN = "Name"
FILTERS_3X3_COLUMN = "(3, 3) filters"

SOURCE_FORMAT = "onnxzoo2filterdb"
"""``models.checkpoint_format`` and ``models.depth_source`` of imported models."""


def filter_count_column(kh: int, kw: int) -> str:
    """``datastorage.meta.csv``'s column counting a model's filters of one kernel shape: ``"(3, 3) filters"``."""
    return f"({kh}, {kw}) filters"


def parse_filter_ids(text: object) -> tuple[int, int]:
    """``"start:end"`` (end inclusive, as the notebook writes it) -> (start, end exclusive); ValueError else."""
    parts = str(text).split(":")
    if len(parts) != 2:
        raise ValueError(f"filter_ids {text!r} is not 'start:end'")
    start, last = int(parts[0]), int(parts[1])
    return start, last + 1


def format_filter_ids(start: int, end: int) -> str:
    """(start, end exclusive) -> the notebook's ``"start:end"`` with an inclusive end."""
    return f"{start}:{end - 1}"


@dataclass
class ReleaseLayer:
    """One 3x3 layer of a release: its filter range and shape."""

    layer_id: int
    start: int
    end: int
    """Exclusive."""
    in_channels: int
    """Weight dim 1 (input channels per group), as the authors record it."""
    out_channels: int
    conv_depth: int
    conv_depth_norm: float
    layer_depth: int | None = None

    @property
    def n_filters(self) -> int:
        return self.end - self.start


@dataclass
class ReleaseModel:
    """One model of a release: its integer id, name, metadata columns (as the release names them), 3x3 layers."""

    release_id: int
    name: str
    metadata: dict
    layers: list[ReleaseLayer] = field(default_factory=list)

    @property
    def n_filters(self) -> int:
        return sum(layer.n_filters for layer in self.layers)
