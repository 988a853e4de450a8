"""filterlens: CNN checkpoints -> a queryable dataset of 3x3 convolution filters.

Implements and scales up Gavrikov & Keuper, *Adversarial Robustness through the
Lens of Convolutional Filters* (CVPR-W 2022).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily: `import pipeline` (and the CLI's start-up) must not import torch or pandas
    import pandas

try:
    __version__ = version("filterlens")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__", "analyze", "open_dataset"]


def open_dataset(root: str, **kwargs):  # noqa: ANN201 - documented in pipeline.dataset.query
    """Open a filter dataset for querying (see :func:`pipeline.dataset.query.open_dataset`)."""
    from pipeline.dataset.query import open_dataset as _open

    return _open(root, **kwargs)


def analyze(model: object, arch: str | None = None, dataset: str | None = None,
            **options: object) -> pandas.DataFrame:
    """One row per conv layer of a model, state dict or checkpoint path, nothing written
    (see :func:`pipeline.extract.analyze.analyze`)."""
    from pipeline.extract.analyze import analyze as _analyze

    return _analyze(model, arch, dataset, **options)
