"""CLI: `rvc-mlx convert-weights` converts safely and reports bad checkpoints in one line."""

import subprocess
import sys

import numpy as np

from rvc_mlx.rmvpe import RMVPE


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "rvc_mlx.cli", *args], capture_output=True, text=True)


def test_convert_weights_writes_loadable_mlx_safetensors(parity, tmp_path):
    src = parity.weights(parity.component("rmvpe")).path
    out = tmp_path / "rmvpe.safetensors"
    res = _cli("convert-weights", "rmvpe", str(src), "-o", str(out))
    assert res.returncode == 0, res.stderr
    x = np.cos(np.arange(3000) / 9).astype(np.float32)
    np.testing.assert_array_equal(RMVPE.from_checkpoint(out).salience(x), RMVPE.from_checkpoint(src).salience(x))


def test_convert_weights_of_a_non_checkpoint_fails_with_one_line(tmp_path):
    junk = tmp_path / "rmvpe.pt"
    junk.write_bytes(b"not a zip")
    res = _cli("convert-weights", "rmvpe", str(junk))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "not a loadable weights-only checkpoint" in res.stderr


def test_convert_weights_handles_the_packaged_crepe_and_fcpe_files(tmp_path):
    from rvc_mlx.crepe import CREPE
    from rvc_mlx.fcpe import FCPE
    from rvc_mlx.testing.packages import asset

    x = (0.5 * np.sin(2 * np.pi * 220 * np.arange(4000) / 16000)).astype(np.float32)
    for component, name, cls in [("crepe", "crepe-tiny", CREPE), ("fcpe", "fcpe", FCPE)]:
        out = tmp_path / f"{name}.safetensors"
        res = _cli("convert-weights", component, str(asset(name)), "-o", str(out))
        assert res.returncode == 0, res.stderr
        np.testing.assert_array_equal(cls.from_checkpoint(out).f0(x), cls.from_checkpoint(asset(name)).f0(x))
