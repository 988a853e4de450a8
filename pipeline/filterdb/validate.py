"""Checks of a release before anything is written: the whole file's filter ranges, then each model's layers.

``validate_ranges`` is file-wide (every filter belongs to exactly one layer: no overlap, no gap,
nothing past the end of ``filters``) and fails the whole import; ``validate_model`` fails one
model (a failures row), and the others go on. NaN/Inf filters are found while a layer is read
(``check_finite``).
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.errors import FilterDBFormatError
from pipeline.filterdb.layout import FILTERS_3X3_COLUMN, ReleaseLayer, ReleaseModel
from pipeline.filterdb.reader import Release


def _describe(model: ReleaseModel, layer: ReleaseLayer) -> str:
    return f"model {model.name!r} layer_id {layer.layer_id} (filters {layer.start}..{layer.end - 1})"


def validate_ranges(release: Release) -> None:
    """Raise FilterDBFormatError unless the layers' filter ranges tile ``filters`` exactly (rows 0 .. N-1)."""
    spans = sorted(((la.start, la.end, model, la) for model in release.models for la in model.layers),
                   key=lambda s: (s[0], s[1]))
    where = f"{release.h5_path}"
    covered = 0
    previous = None
    for start, end, model, layer in spans:
        if start < 0 or end <= start:
            raise FilterDBFormatError(f"{where}: {_describe(model, layer)} is an empty or negative filter range")
        if start < covered:
            raise FilterDBFormatError(f"{where}: filter ranges overlap: {_describe(*previous)} and "
                                      f"{_describe(model, layer)} both claim filters {start}..{min(end, covered) - 1}")
        if start > covered:
            raise FilterDBFormatError(f"{where}: filters {covered}..{start - 1} belong to no layer (the ranges "
                                      f"do not cover /filters; the next range is {_describe(model, layer)})")
        covered, previous = end, (model, layer)
    if covered != release.n_rows:
        if covered > release.n_rows:
            raise FilterDBFormatError(f"{where}: {_describe(*previous)} ends past the last of the "
                                      f"{release.n_rows} filters in /filters")
        raise FilterDBFormatError(f"{where}: filters {covered}..{release.n_rows - 1} belong to no layer (the "
                                  f"ranges do not cover /filters)")


def validate_model(model: ReleaseModel) -> None:
    """Raise FilterDBFormatError when a model's layers disagree with their shapes or its filter count."""
    seen: set[int] = set()
    for layer in model.layers:
        if layer.layer_id in seen:
            raise FilterDBFormatError(f"model {model.name!r}: layer_id {layer.layer_id} appears twice")
        seen.add(layer.layer_id)
        if layer.in_channels <= 0 or layer.out_channels <= 0:
            raise FilterDBFormatError(f"{_describe(model, layer)}: in_channels {layer.in_channels}, out_channels "
                                      f"{layer.out_channels} must be positive")
        expected = layer.in_channels * layer.out_channels
        if layer.n_filters != expected:
            raise FilterDBFormatError(f"{_describe(model, layer)}: holds {layer.n_filters} filters, but "
                                      f"in_channels x out_channels = {layer.in_channels} x {layer.out_channels} "
                                      f"= {expected}")
        if not math.isnan(layer.conv_depth_norm) and not 0 <= layer.conv_depth_norm <= 1:
            raise FilterDBFormatError(f"{_describe(model, layer)}: conv_depth_norm {layer.conv_depth_norm} is not "
                                      f"in [0, 1]")
    declared = model.metadata.get(FILTERS_3X3_COLUMN)
    if isinstance(declared, (int, float)) and not isinstance(declared, bool) and declared != model.n_filters:
        raise FilterDBFormatError(f"model {model.name!r}: '{FILTERS_3X3_COLUMN}' says {declared:g}, but its layers "
                                  f"hold {model.n_filters} filters")


def check_finite(model: ReleaseModel, layer: ReleaseLayer, filters: np.ndarray) -> None:
    """Raise FilterDBFormatError when a layer's filters hold NaN or Inf values (the release should have none)."""
    bad = ~np.isfinite(filters)
    if bad.any():
        first = int(np.flatnonzero(bad.any(axis=1))[0])
        raise FilterDBFormatError(f"{_describe(model, layer)}: {int(bad.sum())} NaN/Inf values (first in filter "
                                  f"{layer.start + first})")
