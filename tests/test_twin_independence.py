"""The float64 oracle is independent of the port it judges: every PyTorch twin module imports without rvc_mlx
or MLX (so nothing of the port configures the oracle's process), sharing only rvc_common's side-effect-free
hyper-parameters, input checks and seeded draws."""

import pkgutil
import subprocess
import sys

import reference_torch

TWIN_MODULES = sorted(m.name for m in pkgutil.walk_packages(reference_torch.__path__, "reference_torch."))


def test_every_twin_module_imports_without_rvc_mlx_or_mlx():
    assert len(TWIN_MODULES) >= 11, TWIN_MODULES
    code = ("import importlib, sys\n"
            f"for name in {TWIN_MODULES!r}:\n"
            "    importlib.import_module(name)\n"
            "    loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('rvc_mlx', 'mlx'))\n"
            "    assert not loaded, f'{name} imports {loaded[:3]}'\n")
    # checked after each import: the first module that pulls the port in is the one named
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr.strip().splitlines()[-1]
