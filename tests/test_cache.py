"""Converted-weight cache entries are verified, not trusted: each records the content hash of its source and of
itself; a damaged, truncated or stale entry is rebuilt once with a one-line notice, and temp files of killed
conversions are removed. A damaged converted file given by the user is refused in one line."""

import json
import subprocess
import sys

import numpy as np
import pytest

from rvc_mlx.checkpoints import CheckpointError, converted_path, file_sha256, read_mlx_metadata, state_sha256
from rvc_mlx.crepe import CREPE
from rvc_mlx.testing.packages import asset

X = (0.5 * np.sin(2 * np.pi * 220 * np.arange(4000) / 16000)).astype(np.float32)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RVC_MLX_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture
def reference(cache):
    """(the cache entry's bytes, the f0 computed from it) after a first, clean conversion."""
    f0 = CREPE.from_checkpoint(asset("crepe-tiny")).f0(X)
    return converted_path(asset("crepe-tiny"), "crepe").read_bytes(), f0


def _entry():
    return converted_path(asset("crepe-tiny"), "crepe")


def _content(data: bytes) -> tuple:
    """A safetensors file's metadata and tensors (its bytes vary: the metadata order is a hash map's)."""
    from safetensors.numpy import load

    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])  # u64 length, then the JSON header
    return header["__metadata__"], state_sha256(load(data))


def _notices(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("rvc-mlx: ")]


def test_an_entry_records_the_hash_of_its_source_and_of_its_own_content(reference):
    from safetensors.numpy import load_file

    meta = read_mlx_metadata(_entry(), "crepe")
    assert meta["source_sha256"] == file_sha256(asset("crepe-tiny"))
    assert meta["sha256"] == state_sha256(load_file(str(_entry())))


@pytest.mark.parametrize("damage", ["flipped-bit-in-weights", "truncated", "flipped-bit-in-header", "empty"])
def test_a_damaged_entry_is_rebuilt_once_with_a_notice_and_gives_the_right_result(reference, capsys, damage):
    good, f0 = reference
    capsys.readouterr()
    data = bytearray(good)
    if damage == "flipped-bit-in-weights":
        data[len(data) - 1000] ^= 0x10  # a mantissa bit deep in the tensor data: the file still parses
    elif damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped-bit-in-header":
        data[20] ^= 0x01
    else:
        data = bytearray()
    _entry().write_bytes(bytes(data))
    np.testing.assert_array_equal(CREPE.from_checkpoint(asset("crepe-tiny")).f0(X), f0)
    notes = _notices(capsys)
    assert len(notes) == 1 and "crepe-" in notes[0] and "converting" in notes[0], notes
    assert _content(_entry().read_bytes()) == _content(good)
    CREPE.from_checkpoint(asset("crepe-tiny"))
    assert _notices(capsys) == []  # rebuilt once: the next run finds it sound


def test_an_entry_without_content_hash_from_an_older_version_is_rebuilt(reference, capsys):
    from safetensors.numpy import load_file, save_file

    arrays = load_file(str(_entry()))
    meta = read_mlx_metadata(_entry(), "crepe")
    del meta["sha256"]
    save_file(arrays, str(_entry()), metadata=meta)
    capsys.readouterr()
    CREPE.from_checkpoint(asset("crepe-tiny"))
    assert "predates content hashes" in _notices(capsys)[0]
    assert "sha256" in read_mlx_metadata(_entry(), "crepe")


def test_a_damaged_converted_file_given_by_the_user_is_refused_in_one_line(reference, tmp_path):
    good, _ = reference
    mine = tmp_path / "mine.safetensors"
    data = bytearray(good)
    data[len(data) - 1000] ^= 0x10
    mine.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as e:
        CREPE.from_checkpoint(mine)
    assert "do not match the sha256 recorded in the file (damaged)" in str(e.value) and "\n" not in str(e.value)


def test_a_killed_conversion_leaves_a_temp_file_that_the_next_run_removes(cache):
    # a conversion killed (SIGKILL) while writing its entry: the child stops inside the temp file's write
    code = ("import os, rvc_mlx.outputs as o\n"
            "real = o.atomic_write\n"
            "def killed(path):\n"
            "    cm = real(path); f = cm.__enter__(); f.write(b'partial'); f.flush(); os.kill(os.getpid(), 9)\n"
            "o.atomic_write = killed\n"
            "from rvc_mlx.crepe import CREPE\n"
            "from rvc_mlx.testing.packages import asset\n"
            "CREPE.from_checkpoint(asset('crepe-tiny'))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == -9, res.stderr
    folder = cache / "converted"
    orphans = [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert len(orphans) == 1 and not _entry().exists()
    CREPE.from_checkpoint(asset("crepe-tiny"))
    assert sorted(p.name for p in folder.iterdir()) == [_entry().name]
