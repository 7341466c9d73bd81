"""attngan-fast: AttnGAN (Xu et al., CVPR 2018) on PyTorch with fused Triton attention kernels.

The attention math lives in ``attngan_fast.kernels`` (the repository's top-level ``kernels/`` folder,
installed under this package), which needs nothing else of the package; the rest of the package
holds the model, data, losses, training and evaluation on top of it.
"""

import sys as _sys
from importlib.abc import MetaPathFinder as _MetaPathFinder
from importlib.util import spec_from_file_location as _spec_from_file_location
from pathlib import Path as _Path

__version__ = "0.1.0"


class _CheckoutKernels(_MetaPathFinder):
    """Finds ``attngan_fast.kernels`` in a source checkout that is not installed (``PYTHONPATH=.``, as
    on a machine that cannot reach PyPI): the repository's top-level ``kernels/`` folder, under the
    same one name an install gives it. First on ``sys.meta_path``: the kernels always come from the
    checkout this package came from, never from another copy installed in the environment."""

    attngan_fast_checkout = True  # how a second import of this module (a reload) sees it is there

    def __init__(self, folder: _Path):
        self.folder = folder

    def find_spec(self, name, path=None, target=None):
        if name != f"{__name__}.kernels":
            return None
        return _spec_from_file_location(name, self.folder / "__init__.py", submodule_search_locations=[str(self.folder)])


def _checkout_kernels() -> _Path | None:
    """The checkout's kernels/ folder when this package runs from a checkout (pyproject.toml beside it)
    without the installed mapping (no attngan_fast/kernels folder); else None."""
    here = _Path(__file__).resolve().parent
    folder = here.parent / "kernels"
    if (here / "kernels").is_dir() or not (here.parent / "pyproject.toml").is_file():
        return None
    return folder if (folder / "__init__.py").is_file() else None


if (_folder := _checkout_kernels()) is not None and not any(getattr(f, "attngan_fast_checkout", False)
                                                             for f in _sys.meta_path):
    _sys.meta_path.insert(0, _CheckoutKernels(_folder))
