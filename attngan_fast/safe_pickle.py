"""Reading the release's pickles (``captions.pickle``, ``filenames.pickle``, ``class_info.pickle``)
without running code: only plain containers, strings, bytes and numbers (and numpy arrays of numbers,
which the release's class_info files hold) are admitted; any other global is refused."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}
_BUILTIN_GLOBALS = {("builtins", name) for name in ("list", "dict", "tuple", "set", "frozenset", "str", "bytes", "int", "float", "bool")}
_BUILTIN_GLOBALS |= {("__builtin__", name) for name in ("list", "dict", "tuple", "set", "frozenset", "str", "bytes", "int", "float", "bool")}
# Protocol-2 pickles written by Python 3 spell bytes (numpy array buffers too) as _codecs.encode(str,
# "latin1"): it only turns a string into bytes.
_CODECS = {("_codecs", "encode")}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something other than plain data."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _BUILTIN_GLOBALS or (module, name) in _NUMPY_GLOBALS or (module, name) in _CODECS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"refusing to load {module}.{name}: only plain containers, strings and numbers are read from pickles"
        )


def _reject_objects(obj, path="pickle"):
    """numpy's reconstruct can also build object arrays; admit only numeric/bool/string dtypes."""
    import numpy as np

    if isinstance(obj, np.ndarray) and obj.dtype.kind not in "biufUS":
        raise UnsafePickleError(f"{path}: numpy array of dtype {obj.dtype} is not plain data")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _reject_objects(k, path)
            _reject_objects(v, path)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _reject_objects(v, path)
    return obj


def load_plain_pickle(source: str | Path | bytes):
    """Unpickle a file (or bytes) holding plain data only; raise UnsafePickleError for anything else.
    Python-2 pickles (the release's) are decoded with latin-1 so byte strings survive."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    name = "pickle" if isinstance(source, bytes) else str(source)
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{name}: {err}") from None  # which file asked for code
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError, KeyError, TypeError) as err:
        raise UnsafePickleError(f"{name} is not a readable pickle ({type(err).__name__}: {err}): a text file, a "
                                "truncated download, or another format") from None
    return _reject_objects(obj, name)


def as_text(x) -> str:
    """A key read from a Python-2 pickle may be bytes; our code wants str."""
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)
