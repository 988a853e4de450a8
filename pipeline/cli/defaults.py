"""Command-line defaults read from the dataclasses that own them, so a flag and its field never disagree."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace


def defaults_of(cls: type) -> SimpleNamespace:
    """The default of every field of dataclass ``cls`` (factories called), as attributes."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return SimpleNamespace(**values)
