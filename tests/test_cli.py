"""CLI: `rvc-mlx convert-weights` converts safely and reports bad checkpoints in one line; every argument problem
of `convert` is one line naming the argument, before any model loads; outputs are replaced only when complete."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

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


# ----------------------------------------------------------------------------------------- argument problems
@pytest.fixture
def files(tmp_path, monkeypatch):
    """Real model files, an input, and an empty cache (to prove that nothing was converted or loaded)."""
    from rvc_mlx.testing.synthetic import cached_checkpoint

    paths = {"synth": cached_checkpoint("synth-v2-40k-f0"), "hubert": cached_checkpoint("contentvec"),
             "rmvpe": cached_checkpoint("rmvpe"), "input": tmp_path / "in.wav"}
    sf.write(paths["input"], (0.3 * np.sin(np.arange(8000) / 9)).astype(np.float32), 16000)
    monkeypatch.setenv("RVC_MLX_CACHE", str(tmp_path / "cache"))
    return paths


def _args(f, tmp_path, case):
    out = tmp_path / "out.wav"
    args = {"-m": f["synth"], "--hubert": f["hubert"], "--rmvpe": f["rmvpe"], "-o": out}
    tiny = tmp_path / "tiny.wav"
    sf.write(tiny, np.full(1000, 0.1, np.float32), 44100)  # 22.7 ms: 363 samples at 16 kHz
    edit = {"model-is-a-folder": {"-m": tmp_path}, "output-is-a-folder": {"-o": tmp_path},
            "mp3-output": {"-o": tmp_path / "out.mp3"}, "output-folder-missing": {"-o": tmp_path / "no" / "o.wav"},
            "output-is-the-input": {"-o": f["input"]}, "hubert-is-a-file": {"--hubert": f["hubert"] / "config.json"},
            "rmvpe-missing": {"--rmvpe": tmp_path / "rmvpe.pt"}, "index-missing": {"--index": tmp_path / "x.index"},
            "output-unwritable": {"-o": Path("/proc/self/out.wav")}, "input-too-short": {}}[case]
    args.update(edit)
    source = tiny if case == "input-too-short" else f["input"]
    return ["convert", str(source)] + [str(x) for kv in args.items() for x in kv]


@pytest.mark.parametrize("case, message", [
    ("model-is-a-folder", "-m {tmp}: is a directory; pass the file itself"),
    ("output-is-a-folder", "-o {tmp}: is a directory; give a file name"),
    ("mp3-output", "-o {tmp}/out.mp3: cannot write .mp3; use .flac or .wav"),
    ("output-folder-missing", "-o {tmp}/no/o.wav: folder {tmp}/no does not exist; create it first"),
    ("output-is-the-input", "-o {tmp}/in.wav: is the input file; choose another output or pass --overwrite"),
    ("hubert-is-a-file", "/config.json: is a .json file; pass the ContentVec folder holding it"),
    ("rmvpe-missing", "--rmvpe {tmp}/rmvpe.pt: no such file"),
    ("index-missing", "--index {tmp}/x.index: no such file"),
    ("output-unwritable", "-o /proc/self/out.wav: cannot write in /proc/self"),
    ("input-too-short", "input audio is too short: 363 samples at 16 kHz (22.7 ms); need at least 400 (25 ms)"),
])
def test_each_argument_problem_is_one_line_naming_it_before_any_model_loads(files, tmp_path, capsys, case,
                                                                            message):
    from rvc_mlx.cli import main

    before = files["input"].read_bytes()
    assert main(_args(files, tmp_path, case)) == 2
    err = capsys.readouterr().err
    assert err.startswith("rvc-mlx: ") and err.count("\n") == 1, err
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "cache" / "converted").exists() or not any((tmp_path / "cache" / "converted").iterdir())
    assert files["input"].read_bytes() == before and not (tmp_path / "out.wav").exists()


def test_convert_weights_force_replaces_only_once_the_new_file_is_complete(tmp_path):
    out = tmp_path / "rmvpe.safetensors"
    out.write_bytes(b"the user's existing file")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    res = _cli("convert-weights", "rmvpe", str(junk), "-o", str(out), "--force")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert out.read_bytes() == b"the user's existing file"
    res = _cli("convert-weights", "rmvpe", str(junk), "-o", str(out))
    assert res.returncode == 2 and "exists; pass --force to replace it" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt", "rmvpe.safetensors"]


def test_convert_weights_on_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path):
    from rvc_mlx.testing.packages import asset

    out = tmp_path / "crepe.safetensors"
    out.write_bytes(b"the user's existing file")
    limit = 100_000  # the converted tiny CREPE is ~2 MB: the write fails with EFBIG as a full disk fails
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
            "from rvc_mlx.cli import main\n"
            f"sys.exit(main(['convert-weights', 'crepe', {str(asset('crepe-tiny'))!r}, '-o', {str(out)!r}, "
            "'--force']))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert res.stderr == f"rvc-mlx: cannot write {out}: File too large; the existing file is unchanged\n"
    assert out.read_bytes() == b"the user's existing file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crepe.safetensors"]


class _System:
    """Unpickling this runs a shell command (the marker file proves whether it ran)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", [["info"], ["convert-weights", "rmvpe"], ["convert", "IN", "-o", "OUT.wav", "-m"]])
def test_a_pickle_calling_os_system_is_refused_in_one_line_without_torchs_retry_advice(tmp_path, command):
    import torch

    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pth"
    torch.save({"weight": {"emb_g.weight": torch.zeros(1)}, "config": _System(marker)}, evil)
    src = tmp_path / "in.wav"
    sf.write(src, np.zeros(16000, np.float32), 16000)
    args = [str(src) if a == "IN" else str(tmp_path / a) if a == "OUT.wav" else a for a in command] + [str(evil)]
    if command[0] == "convert":
        args += ["--hubert", str(tmp_path)]  # not reached: the model is refused before anything else loads
        (tmp_path / "config.json").write_text("{}")
    res = _cli(*args)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"rvc-mlx: {evil}: not a loadable weights-only")
    assert "references posix.system, which is code, not weights; refusing to unpickle it" in res.stderr
    assert "weights_only" not in res.stderr.replace("weights-only", "") and "False" not in res.stderr
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is live: an unrestricted load runs it
    assert marker.exists()
