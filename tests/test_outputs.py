"""Outputs are written whole or not at all: temp file + fsync + rename, output paths refused before any work,
temp files of killed writers removed by the next run, and never anyone else's files."""

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from rvc_mlx.outputs import (
    AUDIO_FORMATS,
    OutputError,
    atomic_write,
    atomic_write_bytes,
    check_output,
    remove_orphans,
    write_audio,
)


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old content")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def _write_under_size_limit(path, size, limit):
    """Child process: write `size` bytes atomically under RLIMIT_FSIZE = limit (a disk that fills up)."""
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # the write then fails with EFBIG, as ENOSPC would
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
            "from rvc_mlx.outputs import atomic_write_bytes\n"
            f"atomic_write_bytes({str(path)!r}, b'x' * {size})\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_a_full_disk_is_one_line_and_the_existing_file_is_unchanged(tmp_path):
    target = tmp_path / "weights.safetensors"
    target.write_bytes(b"complete old file")
    res = _write_under_size_limit(target, 200_000, 50_000)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("rvc_mlx.outputs.OutputError: cannot write ") and "File too large" in last
    assert "the existing file is unchanged" in last
    assert target.read_bytes() == b"complete old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.safetensors"]


def test_a_write_under_the_limit_completes(tmp_path):
    target = tmp_path / "small.bin"
    assert _write_under_size_limit(target, 1000, 50_000).returncode == 0
    assert target.read_bytes() == b"x" * 1000


@pytest.mark.parametrize("suffix", sorted(AUDIO_FORMATS))
def test_audio_is_written_in_the_format_its_extension_names(tmp_path, suffix):
    x = (0.5 * np.sin(np.arange(4000) / 7)).astype(np.float32)
    write_audio(tmp_path / f"out{suffix}", x, 32000)
    y, sr = sf.read(tmp_path / f"out{suffix}", dtype="float32")
    assert sr == 32000 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=0 if suffix == ".wav" else 2.0 ** -23)


def test_orphans_of_dead_writers_are_removed_and_live_or_foreign_files_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f".model.safetensors.{dead.pid}-abc123.tmp"
    live = tmp_path / f".model.safetensors.{os.getppid()}-def456.tmp"  # our parent is alive: still writing
    foreign = tmp_path / ".notes.tmp"  # not named like our temp files
    for p in (orphan, live, foreign):
        p.write_bytes(b"partial")
    assert remove_orphans(tmp_path) == [orphan]
    assert not orphan.exists() and live.exists() and foreign.exists()
    old = 2 * 24 * 3600
    os.utime(live, (live.stat().st_atime - old, live.stat().st_mtime - old))
    assert remove_orphans(tmp_path) == [live]  # a day old: orphaned even if the pid is in use again


def test_orphans_in_an_output_folder_are_removed_only_for_that_output(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine, other = (tmp_path / f".{n}.{dead.pid}-x1.tmp" for n in ("out.wav", "other.wav"))
    mine.write_bytes(b"1")
    other.write_bytes(b"2")
    write_audio(tmp_path / "out.wav", np.zeros(1000, np.float32), 16000)
    assert not mine.exists() and other.exists()


@pytest.mark.parametrize("case, message", [
    ("directory", "is a directory; give a file name"),
    ("no-folder", "does not exist; create it first"),
    ("mp3", "cannot write .mp3; use .flac or .wav"),
    ("input", "is the input file; choose another output or pass --overwrite"),
    ("read-only", "cannot write in"),
])
def test_bad_output_paths_are_refused_in_one_line_before_any_work(tmp_path, case, message):
    src = tmp_path / "in.wav"
    src.write_bytes(b"RIFF")
    path = {"directory": tmp_path, "no-folder": tmp_path / "missing" / "out.wav", "mp3": tmp_path / "out.mp3",
            "input": src, "read-only": tmp_path / "ro" / "out.wav"}[case]
    if case == "read-only":
        (tmp_path / "ro").mkdir()
        # root ignores permission bits: a folder that cannot take new entries for anyone is one in /proc
        path = path if os.geteuid() else type(path)("/proc/self/out.wav")
        (tmp_path / "ro").chmod(0o500)
    with pytest.raises(OutputError) as e:
        check_output(path, "-o", AUDIO_FORMATS, inputs=(src,))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith(f"-o {path}")


def test_the_input_may_be_replaced_only_with_overwrite(tmp_path):
    src = tmp_path / "in.wav"
    sf.write(src, np.zeros(800, np.float32), 16000)
    assert check_output(src, "-o", AUDIO_FORMATS, inputs=(src,), overwrite=True) == src


def test_atomic_write_bytes_creates_missing_parent_folders_for_cache_entries(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "b" / "c.bin", b"data")
    assert (tmp_path / "a" / "b" / "c.bin").read_bytes() == b"data"


def test_a_new_file_gets_the_umask_mode_and_a_replaced_file_keeps_its_own(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "new.wav", b"x")
        keep = tmp_path / "kept.wav"
        keep.write_bytes(b"old")
        keep.chmod(0o640)
        atomic_write_bytes(keep, b"new")
    finally:
        os.umask(umask)
    assert (tmp_path / "new.wav").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert keep.stat().st_mode & 0o777 == 0o640 and keep.read_bytes() == b"new"
