"""Read a pandas/PyTables HDF5 frame without running code from the file.

pandas' ``to_hdf`` stores object columns as pickles (``fixed`` format) and PyTables pickles
non-numeric attributes; reading them with the stock ``pickle.loads`` would run whatever
a hostile ``dataset.h5`` asks for. ``restricted_unpickling()`` swaps PyTables' ``pickle`` for
one whose unpickler knows only the globals a data frame needs (NumPy arrays, dtypes and
scalars); anything else is refused and reported as ``FilterDBFormatError``.
"""

from __future__ import annotations

import io
import pickle
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.errors import FilterDBFormatError

ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("builtins", "complex"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
    ("builtins", "bytearray"), ("_codecs", "encode"),
    # PyTables' own FILTERS attribute (a protocol-0 pickle of tables.filters.Filters, rebuilt from object):
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"), ("tables.filters", "Filters"),
    ("__builtin__", "object"), ("builtins", "object"),
})
"""What an object column or an attribute of a pandas frame may contain (data, never callables that act;
``_reconstructor`` only instantiates a class that itself must be on this list)."""

_LOCK = threading.Lock()


class _Refusing(pickle.Unpickler):
    def __init__(self, data: bytes, refused: list[str], **kwargs: object) -> None:
        super().__init__(io.BytesIO(data), **kwargs)
        self.refused = refused

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        self.refused.append(f"{module}.{name}")
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def _shim(refused: list[str]) -> types.SimpleNamespace:
    """A stand-in for the ``pickle`` module as PyTables uses it, with a restricted ``loads``."""

    def loads(data: bytes, *, encoding: str = "ASCII", errors: str = "strict", **_: object) -> object:
        return _Refusing(bytes(data), refused, encoding=encoding, errors=errors).load()

    names = {k: getattr(pickle, k) for k in dir(pickle) if not k.startswith("__")}
    return types.SimpleNamespace(**{**names, "loads": loads})


@contextmanager
def restricted_unpickling(what: str) -> Iterator[None]:
    """Within the block, PyTables unpickles only ``ALLOWED_GLOBALS``; a refused global raises
    FilterDBFormatError naming ``what`` (even when PyTables swallowed the refusal and read on)."""
    import tables.atom
    import tables.attributeset

    refused: list[str] = []
    shim = _shim(refused)
    with _LOCK:
        saved = tables.atom.pickle, tables.attributeset.pickle
        tables.atom.pickle = tables.attributeset.pickle = shim
        try:
            try:
                yield
            except FilterDBFormatError:
                raise
            except Exception:
                if refused:
                    raise _refusal(what, refused) from None
                raise
            if refused:
                raise _refusal(what, refused)
        finally:
            tables.atom.pickle, tables.attributeset.pickle = saved


def _refusal(what: str, refused: list[str]) -> FilterDBFormatError:
    names = ", ".join(sorted(set(refused))[:3])
    return FilterDBFormatError(f"{what}: its pickled metadata asks to load {names}, which a data frame never "
                               f"needs; refused (not unpickled). Import from the CSVs instead (filterinfo.csv, "
                               f"datastorage.meta.csv, meta.csv) with --metadata csv")
