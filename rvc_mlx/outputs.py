"""Writing files so that nothing is lost: temp file in the target's directory, fsync, rename; paths checked first.

Every file rvc-mlx writes (audio, converted weights, cache entries, golden files, reports) goes through
`atomic_write`: a crash, a kill or a full disk leaves either the old file or the complete new one, never a
fragment. Temp files are named `.<target>.<pid>-<random>.tmp`, so a later run can tell a dead writer's orphan
from a file another live process is still writing (`remove_orphans`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import struct
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np

# Output formats `convert` writes (soundfile format, subtype): float WAV is exact; FLAC has no float subtype.
AUDIO_FORMATS = {".wav": ("WAV", "FLOAT"), ".flac": ("FLAC", "PCM_24")}
_TEMP = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")
ORPHAN_AGE_S = 24 * 3600  # a temp file this old is an orphan even if its pid is alive again (pid reuse)


class OutputError(OSError):
    """An output that cannot be written (directory, missing folder, read-only, format, full disk); one line
    naming the target (an OSError built from the message alone prints just the message)."""


def describe(e: OSError) -> str:
    """An OSError as one line without the errno prefix (`No space left on device`)."""
    return e.strerror or (str(e).splitlines()[0] if str(e) else type(e).__name__)


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator:
    """Yield a binary file in `path`'s directory; on success fsync it and rename it onto `path`.

    On any failure (exception, full disk, file size limit) the temp file is removed and `path` is untouched."""
    path = Path(path)
    existed = path.exists()
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"cannot write {path}: {describe(e)}") from None
    try:
        os.fchmod(fd, _mode(path))  # mkstemp makes 0600; the file gets the mode a plain open() would give it
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            kept = "the existing file is unchanged" if existed else "nothing was written"
            raise OutputError(f"cannot write {path}: {describe(e)}; {kept}") from None
        raise
    fsync_dir(path.parent)


def _mode(path: Path) -> int:
    """The replaced file's permissions, or those the umask gives a new file."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def fsync_dir(folder: Path) -> None:
    # the rename itself must reach the disk; some filesystems refuse fsync on a directory, which is harmless
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.write(data)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_orphans(folder: str | Path, target: str | None = None) -> list[Path]:
    """Delete temp files left in `folder` by killed writers (dead pid, or older than a day); returns them.

    `target` limits this to temp files of one file name (an output folder holds the user's other files)."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    now = time.time()
    for entry in folder.iterdir():
        m = _TEMP.match(entry.name)
        if not m or (target is not None and m["target"] != target) or not entry.is_file():
            continue
        pid = int(m["pid"])
        try:
            old = now - entry.stat().st_mtime > ORPHAN_AGE_S
        except FileNotFoundError:
            continue
        if (pid != os.getpid() and not _alive(pid)) or old:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def check_writable(folder: Path, what: str) -> None:
    """Prove `folder` takes a new file by creating one (os.access says yes to root on a read-only mount)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".rvc-mlx-probe.{os.getpid()}-", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"{what}: cannot write in {folder} ({describe(e)})") from None
    os.close(fd)
    os.unlink(tmp)


def check_output(path: str | Path, arg: str, suffixes: dict | None = None, inputs: tuple = (),
                 overwrite: bool = False) -> Path:
    """Refuse an output path before any work: a directory, a missing folder, a read-only folder, an
    unsupported extension, or one of the `inputs` (unless `overwrite`). Returns the path."""
    path = Path(path)
    what = f"{arg} {path}"
    if path.is_dir():
        raise OutputError(f"{what}: is a directory; give a file name, e.g. {path / 'out.wav'}")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise OutputError(f"{what}: cannot write {path.suffix or 'files without an extension'}; "
                          f"use {' or '.join(sorted(suffixes))}")
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"{what}: folder {folder} does not exist; create it first")
    for source in inputs:
        if source is not None and Path(source).exists() and path.exists() and os.path.samefile(source, path) \
                and not overwrite:
            raise OutputError(f"{what}: is the input file; choose another output or pass "
                              "--overwrite to replace the input")
    check_writable(folder, what)
    return path


def write_audio(path: str | Path, audio: np.ndarray, sr: int) -> None:
    """Write mono audio atomically in the format its extension names (AUDIO_FORMATS)."""
    import soundfile as sf

    path = Path(path)
    fmt, subtype = AUDIO_FORMATS[path.suffix.lower()]
    remove_orphans(path.parent, target=path.name)
    buf = io.BytesIO()  # encoded in memory: a write error then surfaces from os.write, not inside libsndfile
    sf.write(buf, audio, sr, format=fmt, subtype=subtype)
    atomic_write_bytes(path, buf.getvalue())


_ST_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32",
              "int16": "I16", "int8": "I8", "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8",
              "bool": "BOOL"}


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """The safetensors file of `tensors`, byte for byte the same for the same arrays: tensors by descending item
    size then name (as the reference writer orders them), metadata keys sorted (the reference writer serialises
    metadata from a Rust HashMap, whose order changes from process to process)."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    chunks, offset = [], 0
    for name in sorted(tensors, key=lambda n: (-tensors[n].dtype.itemsize, n)):
        a = np.ascontiguousarray(tensors[name])
        code = _ST_DTYPES.get(a.dtype.name)
        if code is None:
            raise ValueError(f"tensor {name!r} has dtype {a.dtype}, which safetensors files do not hold")
        blob = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
        chunks.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)
