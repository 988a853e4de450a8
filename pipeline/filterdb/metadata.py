"""The release's model columns -> the models table: an explicit map, everything else kept in metadata_json.

The paper's release (``meta.csv`` of cvpr22w_RobustnessThroughTheLens) and CNN-Filter-DB
name their columns as spreadsheets do; each mapped column is listed in ``COLUMN_MAP`` and
parsed by type. ``Threat Model``, ``Eps`` and ``Venue`` are not in the authors' sheets; the
exporter (``export.py``) writes them so that a round trip keeps those fields.
"""

from __future__ import annotations

import math
import re

from pipeline.errors import ConfigError, FilterDBFormatError
from pipeline.filterdb.layout import MODEL_NAME_COLUMN, ReleaseModel
from pipeline.zoo.spec import ADVERSARIAL_THREAT_MODELS, THREAT_MODELS, ModelSpec

COLUMN_MAP = {
    "Training-Dataset": "dataset",
    "Robust": "robust",
    "Threat Model": "threat_model",
    "Clean Accuracy": "clean_acc",
    "Robust Accuracy": "robust_acc",
    "Backbone": "architecture",
    "Paper": "paper",
    "Pretraining-Dataset": "extra_data",
    "Eps": "eps",
    "Venue": "venue",
}
"""Release column -> models column. ``Pretraining-Dataset`` is True/False in the paper's release (RobustBench's
extra-data flag); a dataset name there (CNN-Filter-DB) is not a flag and stays in metadata_json."""

FLOAT_FIELDS = ("clean_acc", "robust_acc", "eps")
TEXT_FIELDS = ("architecture", "paper", "venue")
TRUE_TEXT, FALSE_TEXT = frozenset({"true", "yes", "1", "1.0"}), frozenset({"false", "no", "0", "0.0"})
UNKNOWN_DATASET = "unknown"


def parse_bool(value: object) -> bool | None:
    """True/False, 1/0, yes/no (any case) -> bool; anything else (NaN, a dataset name) -> None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return bool(value) if value in (0, 1) else None
    text = str(value).strip().lower() if value is not None else ""
    return True if text in TRUE_TEXT else False if text in FALSE_TEXT else None


def parse_float(value: object) -> float | None:
    """A finite number (also from text) or None."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def parse_text(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text if text and text.lower() != "nan" else None


def name_threat_model(name: str) -> str | None:
    """The threat model a release's model name spells (``..._linf_13`` -> Linf, ``_l2_`` -> L2), or None."""
    tokens = set(re.split(r"[^a-z0-9]+", name.lower()))
    if "linf" in tokens:
        return "Linf"
    if "l2" in tokens:
        return "L2"
    return "corruptions" if "corruptions" in tokens else None


def model_spec(model: ReleaseModel, robust_threat_model: str = "Linf") -> ModelSpec:
    """The ModelSpec (models-table fields) of a release model; unmapped non-null columns go to ``metadata``.

    ``model_id`` is the release's model name (its ``model`` column, the ONNX file name), so the paper's
    pairings table resolves against it. Robust models whose threat model neither a ``Threat Model`` column
    nor their name gives get ``robust_threat_model`` (the paper's release is Linf-only).
    """
    if robust_threat_model not in ADVERSARIAL_THREAT_MODELS:
        raise ConfigError(f"--robust-threat-model must be Linf or L2, not {robust_threat_model!r}")
    meta = model.metadata
    fields: dict = {}
    for column, name in COLUMN_MAP.items():
        value = meta.get(column)
        if name in FLOAT_FIELDS:
            fields[name] = parse_float(value)
        elif name in TEXT_FIELDS:
            fields[name] = parse_text(value)
        elif name in ("robust", "extra_data"):
            fields[name] = parse_bool(value)
        else:
            fields[name] = parse_text(value)
    robust = bool(fields["robust"])
    threat = fields["threat_model"]
    if threat is not None and threat not in THREAT_MODELS:
        raise FilterDBFormatError(f"model {model.name!r}: 'Threat Model' is {threat!r}, not one of "
                                  f"{', '.join(THREAT_MODELS)}")
    if threat is None:
        named = name_threat_model(model.name)
        if robust:
            threat = named if named in ADVERSARIAL_THREAT_MODELS else robust_threat_model
        else:
            threat = "corruptions" if named == "corruptions" else "none"
    if robust and threat not in ADVERSARIAL_THREAT_MODELS:
        raise FilterDBFormatError(f"model {model.name!r}: Robust is true but its threat model is {threat}; robust "
                                  f"means adversarially trained (Linf or L2)")
    kept = {k: v for k, v in meta.items() if v is not None and not _mapped(k, v, model.name)}
    kept["release_model_id"] = model.release_id
    return ModelSpec(
        model_id=model.name, dataset=fields["dataset"] or UNKNOWN_DATASET, threat_model=threat, robust=robust,
        architecture=fields["architecture"], clean_acc=fields["clean_acc"], robust_acc=fields["robust_acc"],
        eps=fields["eps"], extra_data=fields["extra_data"], paper=fields["paper"], venue=fields["venue"],
        metadata=kept)


def _mapped(column: str, value: object, name: str) -> bool:
    """Whether a column's value went into a models column (the name columns are the model_id)."""
    if column == MODEL_NAME_COLUMN or (column == "Name" and str(value) == name):
        return True
    if column == "Pretraining-Dataset":
        return parse_bool(value) is not None  # a dataset name is kept in metadata_json
    return column in COLUMN_MAP
