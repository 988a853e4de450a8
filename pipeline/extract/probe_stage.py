"""The probe as a stage of extraction: run the bound model that extraction already holds (pipeline/probe/).

Extraction calls ``probe_ordered`` after the layers are computed; its rows are
committed with the model (``ModelWriter.commit(probes=...)``), or, for a model
already committed, on their own (``pipeline/dataset/probe_rows.py``). Every error
of the stage is a ProbeError, so the caller can record it without losing the
extraction.
"""

from __future__ import annotations

import pyarrow as pa
import torch
from torch import nn

from pipeline.checkpoints.load import ConvWeight
from pipeline.dataset.store import DatasetStore
from pipeline.errors import ProbeError, ProbeUnavailableError
from pipeline.probe.config import ProbeConfig
from pipeline.probe.data import check_fits, load_probe_images
from pipeline.probe.example import example_bytes
from pipeline.probe.run_one import probe_model
from pipeline.probe.transfer import deltas_for, load_transfer


def first_conv_module(model: nn.Module, conv: ConvWeight) -> nn.Module:
    """The module of the first executed conv: by name, else by its weight tensor (aliased ensemble names)."""
    try:
        module = model.get_submodule(conv.name)
        if isinstance(module, nn.Conv2d):
            return module
    except AttributeError:
        pass
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.weight.data_ptr() == conv.weight.data_ptr():
            return module
    raise ProbeError(f"cannot find the first conv {conv.name} in the bound model")


def probe_ordered(model_id: str, dataset: str, model: nn.Module | None, convs: list[ConvWeight],
                  input_shape: tuple[int, ...] | None, store: DatasetStore, config: ProbeConfig,
                  device: torch.device) -> tuple[pa.Table, bytes]:
    """The probes rows of a bound model whose convs were traced in forward order (``convs[0]`` ran first), and
    its example for the notebook's figure (``pipeline/probe/example.py``, npz bytes)."""
    if model is None or not convs:
        raise ProbeUnavailableError(f"{model_id}: only models extracted with an architecture (--arch) can be "
                                    f"probed; this one was read in state-dict or ONNX graph order")
    try:
        images = load_probe_images(config, image_size=int(input_shape[-1]) if input_shape else None)
        check_fits(images, input_shape, model_id)
        transfer, reference = None, None
        if "transfer" in config.kinds and config.transfer_set:
            stored = load_transfer(store.fs, store.path(config.transfer_set))
            transfer, reference = deltas_for(stored, images.images, model_id), stored.reference
        example: dict = {}
        table = probe_model(model, first_conv_module(model, convs[0]), convs[0].name, images, config, device,
                            model_id, dataset, transfer, reference, example)
        return table, example_bytes(example)
    except ProbeError:
        raise
    except Exception as exc:  # noqa: BLE001 - the model's own code failed on the probe images: a probe failure
        raise ProbeError(f"{model_id}: the probe failed: {type(exc).__name__}: {exc}") from exc


def needs_probe(config: ProbeConfig | None, stored_probe_config: str | None) -> bool:
    """Whether a committed model must be probed (again) under ``config``."""
    return config is not None and stored_probe_config != config.key()
