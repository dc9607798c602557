"""`rvc-mlx check` judges an implementation nobody here wrote: the RMVPE twin exported to ONNX and run by ONNX
Runtime, every module output exposed under its tap name. It passes; with one BatchNorm's running variance changed
in the ONNX graph it fails, naming that layer first."""

import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from rvc_mlx.testing.components import REPO

pytest.importorskip("onnxruntime", reason="onnx and onnxruntime are dev dependencies: run `make install`")

CHANGED = "unet.encoder.layers.1.conv.2.conv.4"  # a BatchNorm2d of the second encoder layer's third block
# The export covers the network (mel -> salience); the mel front end and the decoding run outside it.
ABSENT = '[absent]\ntaps = ["rmvpe.mel", "rmvpe.salience", "rmvpe.f0"]\n'


@pytest.fixture(scope="module")
def onnx_rmvpe(parity, tmp_path_factory):
    """The exported RMVPE network and the golden mel it runs on (reflect-padded to 32 frames, as the model pads)."""
    import torch
    import torch.nn.functional as F

    from rvc_mlx.testing import onnx_dump

    comp = parity.component("rmvpe")
    twin = comp.twin(parity.weights(comp, "speech"), torch.float32)
    mel = torch.from_numpy(parity.store.load("rmvpe", "speech").value("rmvpe.mel"))
    mel = F.pad(mel, (0, -mel.shape[-1] % 32), mode="reflect")
    path = tmp_path_factory.mktemp("onnx") / "rmvpe.onnx"
    taps = onnx_dump.export(twin.model.eval(), (mel,), path, input_names=["mel"])
    return path, {"mel": mel.numpy()}, taps


def _check(dump_values, tmp_path):
    dump = tmp_path / "ort.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in dump_values.items() if k != "output"}, str(dump))
    names = tmp_path / "onnx.toml"
    names.write_text(ABSENT)
    res = subprocess.run([sys.executable, "-m", "rvc_mlx.cli", "check", str(dump), "rmvpe", "speech",
                          "--names", str(names)], capture_output=True, text=True, cwd=REPO)
    return res.returncode, res.stdout, res.stderr


@pytest.mark.slow  # an ONNX export of RMVPE (~20 s) and two checks: in make parity
def test_the_onnx_runtime_dump_of_the_exported_twin_passes_rvc_mlx_check(onnx_rmvpe, tmp_path):
    from rvc_mlx.testing import onnx_dump

    path, feeds, taps = onnx_rmvpe
    assert {"unet.encoder.bn", CHANGED, "fc.0.gru:1", "model"} <= set(taps)
    rc, out, err = _check(onnx_dump.run(path, feeds), tmp_path)
    assert rc == 0, out + err
    assert "taps pass" in out.splitlines()[0] and "declared absent" in out


@pytest.mark.slow
def test_a_changed_batchnorm_variance_in_the_onnx_graph_is_blamed_on_that_layer(onnx_rmvpe, tmp_path):
    from rvc_mlx.testing import onnx_dump

    path, feeds, _ = onnx_rmvpe
    bad = tmp_path / "changed.onnx"
    onnx_dump.scale_initializer(path, bad, f"{CHANGED}.running_var", 0, 4.0)
    rc, out, err = _check(onnx_dump.run(bad, feeds), tmp_path)
    assert rc == 1, out + err
    assert f"first divergence at {CHANGED} (BatchNorm2d)" in out.splitlines()[0], out
