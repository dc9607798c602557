"""The golden store's commit journal: staged files move into golden/ as one atomic change, or not at all.

A commit plans its moves (staged file -> its place in golden/, manifest last), backs up every file a move replaces
with a hard link inside the staging dir, writes the journal (atomically), then renames. Each rename is atomic, so
after a kill a move is done exactly when its staged source is gone. The next open settles the journal: it
completes the commit when every move is done or ready (its destination, or else its staged source, has the planned
sha256), and otherwise rolls back (restoring backups, deleting new files). A rollback that was itself killed is
therefore finished, never reversed: a move it undid no longer reads as done.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator

from rvc_mlx.checkpoints import file_sha256
from rvc_mlx.outputs import fsync_dir

JOURNAL = ".commit-journal.json"
STAGING_PREFIX = ".staging-"


class GoldenError(Exception):
    """A golden file or the manifest is missing, corrupt, or inconsistent (message: one line + the fix)."""


def one_line(e: OSError) -> str:
    return " ".join(str(e).split())


@contextmanager
def dir_lock(path: Path, exclusive: bool = True, wait: bool = True) -> Iterator[bool]:
    """flock on a directory (no lock file to leave behind); yields False when `wait` is off and it is held."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB))
            got = True
        except BlockingIOError:
            got = False
        yield got
    finally:
        os.close(fd)  # closing releases the lock


def write_synced(path: Path, blob: bytes) -> None:
    """Write and fsync, so that a file the journal lists is on disk before the renames start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def plan(root: Path, staging: Path, moves: list[tuple[Path, Path]]) -> dict[str, Any]:
    """Back up what the moves replace, then write the journal: from here on the commit is settled, never lost."""
    planned = []
    for src, dst in moves:
        backup = None
        if dst.exists():
            b = staging / ".backup" / dst.relative_to(root)
            b.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(dst, b)
            except OSError as e:  # a filesystem without hard links: copy
                if e.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK):
                    raise
                shutil.copy2(dst, b)
            backup = str(b.relative_to(root))
        planned.append({"src": str(src.relative_to(root)), "dst": str(dst.relative_to(root)),
                        "sha256": file_sha256(src), "backup": backup})
    journal = {"format": 1, "staging": staging.name, "moves": planned}
    tmp = staging / "journal.json"  # written whole, then renamed: the journal is complete or absent
    write_synced(tmp, (json.dumps(journal, indent=1) + "\n").encode())
    os.replace(tmp, root / JOURNAL)
    fsync_dir(root)
    return journal


def forward(root: Path, journal: dict[str, Any]) -> None:
    """Do every move not done yet (idempotent)."""
    for m in journal["moves"]:
        src, dst = root / m["src"], root / m["dst"]
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    for d in {(root / m["dst"]).parent for m in journal["moves"]}:
        fsync_dir(d)


def rollback(root: Path, journal: dict[str, Any]) -> None:
    """Undo every move done, last first: restore the backup, or delete a file that did not exist (idempotent)."""
    for m in reversed(journal["moves"]):
        if (root / m["src"]).exists():  # never moved
            continue
        dst = root / m["dst"]
        if m["backup"] is None:
            dst.unlink(missing_ok=True)
            if dst.parent != root:
                with suppress(OSError):  # a component directory the commit created, if now empty
                    dst.parent.rmdir()
        elif (root / m["backup"]).exists():  # else restored already by a rollback that was killed
            os.replace(root / m["backup"], dst)


def finish(root: Path, journal: dict[str, Any]) -> None:
    """Drop the journal, then the staging dir (its backups are no longer needed)."""
    with suppress(OSError):  # if this fails the next open finds every move done and finishes again
        (root / JOURNAL).unlink()
        fsync_dir(root)
    shutil.rmtree(root / journal["staging"], ignore_errors=True)


def can_complete(root: Path, journal: dict[str, Any]) -> bool:
    """Every move is done or ready: its destination (once moved) or its staged source has the planned sha256."""
    for m in journal["moves"]:
        src, dst = root / m["src"], root / m["dst"]
        done_or_ready = src if src.exists() else dst
        if not done_or_ready.is_file() or file_sha256(done_or_ready) != m["sha256"]:
            return False
    return True


def settle(root: Path) -> str | None:
    """Complete or roll back the commit a killed run left in `root` (the caller holds the root lock)."""
    path = root / JOURNAL
    if not path.exists():
        return None
    fail = (f"golden/{JOURNAL} records a commit that was interrupted and cannot be settled ({{}}): restore golden/ "
            f"with `git checkout golden/`, then delete golden/{JOURNAL} and golden/{STAGING_PREFIX}*")
    try:
        journal = json.loads(path.read_text())
        n = len(journal["moves"])
        if can_complete(root, journal):
            forward(root, journal)
            note = f"golden: completed a commit a killed run left unfinished ({n} moves)"
        else:
            rollback(root, journal)
            note = f"golden: rolled back a commit a killed run left unfinished ({n} moves)"
    except OSError as e:
        raise GoldenError(fail.format(one_line(e))) from None
    except (ValueError, KeyError, TypeError) as e:
        raise GoldenError(fail.format(f"unreadable journal: {e}")) from None
    finish(root, journal)
    return note


def sweep(root: Path) -> None:
    """Remove the staging dirs of runs that died: a live run holds a lock on its own (the caller holds the root's)."""
    for p in root.glob(f"{STAGING_PREFIX}*"):
        if not p.is_dir():
            continue
        with suppress(OSError), dir_lock(p, wait=False) as free:
            if free:
                shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".manifest.json.*.tmp"):  # left by the atomic writes of earlier versions
        with suppress(OSError):
            p.unlink()


