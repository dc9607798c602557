"""Golden store: `golden/<component>/<case>.safetensors` + `golden/manifest.json`.

Each case file holds the float64 oracle's taps rounded to float32 (taps bitwise equal to an earlier tap are
stored once and listed as aliases). The manifest records per case the input, the weights, the versions that
made it, and per tap: shape, dtype, sha256, summary stats, execution order, module type, check kind and
PyTorch float32's error against the stored reference (so MLX can be judged without importing torch).
Loading verifies every sha256 and fails with one line naming the file and the fix.

Regeneration is deterministic and conservative: files are written with a fixed layout, and a case whose oracle
did not change (`oracle_change`) keeps its file, its manifest entry and so its recorded torch float32 errors
(unless errors are refreshed). The commit is atomic as a whole: staged files are listed in a journal
(`golden/.commit-journal.json`, with hard-link backups of the files they replace) before the first rename, and
a run killed mid-commit is completed or rolled back by the next open of the store. Any failure is one line and
leaves golden/ as it was.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rvc_mlx.outputs import safetensors_bytes
from rvc_mlx.testing.environment import environment
from rvc_mlx.testing.golden_commit import (
    JOURNAL,
    STAGING_PREFIX,
    GoldenError,
    dir_lock,
    finish,
    forward,
    one_line,
    plan,
    rollback,
    settle,
    sweep,
    write_synced,
)

MANIFEST_FORMAT = 1
FIX = "restore it with `git checkout golden/` or regenerate with `make golden`"

# When a regenerated case "did not change": same input, weights and tap list (names, order, shapes, module
# types, kinds); discrete taps exactly equal; every other tap equal in its non-finite entries and, elsewhere,
# within UNCHANGED_RTOL x the stored tap's absmax of the stored float32 values. Why this bound: the stored values
# are the float64 oracle rounded to float32, and the oracle's last bits differ between CPUs (GEMM blocking of
# AVX2 vs AVX-512, libm); that can flip a float32 rounding, i.e. move a value by one float32 ulp (<= 1.2e-7 of
# the absmax). The few float32 stages inside the oracle vary more: the pipeline's faiss index search moved
# pipeline.retrieved by 2.9e-7 between two CPUs, the most seen. A change below the bound is also below the
# policy's floor (1e-6 relative, golden/tolerances.toml), so keeping the old golden hides nothing the MLX
# comparison could see; and it is the bound at which test_golden_fresh calls a golden stale.
UNCHANGED_RTOL = 1e-6

@dataclass
class TapInfo:
    """Manifest entry of one reference tap."""

    name: str
    shape: tuple[int, ...]
    order: int
    module_type: str
    kind: str = "tensor"  # "tensor" | "f0" | "discrete"
    dtype: str = "float32"
    sha256: str = ""
    stats: dict[str, float] = field(default_factory=dict)
    torch32: dict[str, float] = field(default_factory=dict)  # torch fp32 vs the stored reference
    torch32_vs_fp64: dict[str, float] = field(default_factory=dict)  # torch fp32 vs the unrounded oracle
    alias_of: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d.pop("name")
        if d["alias_of"] is None:
            d.pop("alias_of")
        return d

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any]) -> "TapInfo":
        return cls(name=name, **{**d, "shape": tuple(d["shape"])})


@dataclass
class CaseData:
    """A reference case: tensors (PyTorch layout) + per-tap info + provenance. Golden or live-made."""

    component: str
    case: str
    tensors: dict[str, np.ndarray]
    taps: dict[str, TapInfo]
    input: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    source: str = "live"  # "golden" | "live"
    oracle_inputs: dict[str, Any] = field(default_factory=dict)  # live only: module inputs, for teacher forcing

    @property
    def key(self) -> str:
        return f"{self.component}/{self.case}"

    def value(self, name: str) -> np.ndarray:
        info = self.taps[name]
        return self.tensors[info.alias_of or name]

    def ordered(self) -> list[TapInfo]:
        return sorted(self.taps.values(), key=lambda t: t.order)


def tensor_sha256(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype.str}|{a.shape}|".encode() + a.tobytes()).hexdigest()


def tensor_stats(a: np.ndarray) -> dict[str, float]:
    x = np.asarray(a, dtype=np.float64)
    if x.size == 0:
        return {"absmax": 0.0, "mean": 0.0, "std": 0.0}
    return {"absmax": float(np.max(np.abs(x))), "mean": float(x.mean()), "std": float(x.std())}


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "numpy": np.__version__, "platform": platform.platform()}
    for mod in ("torch", "mlx.core", "rvc_mlx"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod.split(".")[0]] = getattr(m, "__version__", "?")
    return out


def json_round_trip(x: Any) -> Any:
    """`x` as it reads back from the manifest (tuples become lists), for comparing with a stored entry."""
    return json.loads(json.dumps(x))


def _max_rel_change(old: np.ndarray, new: np.ndarray) -> float:
    """max |new - old| / max |old| over finite entries; inf where the non-finite entries differ."""
    a, b = np.asarray(old, np.float64), np.asarray(new, np.float64)
    fa, fb = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(fa, fb) or not np.array_equal(a[~fa], b[~fb], equal_nan=True):
        return float("inf")
    if not fa.any():
        return 0.0
    d = float(np.max(np.abs(a[fa] - b[fa])))
    scale = float(np.max(np.abs(a[fa])))
    return 0.0 if d == 0.0 else d / scale if scale else float("inf")


def oracle_change(old: CaseData, new: CaseData) -> tuple[str | None, float]:
    """Why `new` differs from the stored `old` beyond float64 noise (None: unchanged, see UNCHANGED_RTOL), and the
    largest relative change of a tap seen up to the verdict."""
    if json_round_trip(old.input) != json_round_trip(new.input):
        return "input changed", float("inf")
    if json_round_trip(old.weights) != json_round_trip(new.weights):
        return "weights changed", float("inf")
    before, after = old.ordered(), new.ordered()
    if [t.name for t in before] != [t.name for t in after]:
        added, removed = len(set(new.taps) - set(old.taps)), len(set(old.taps) - set(new.taps))
        return f"tap list changed (+{added} -{removed}, or reordered)", float("inf")
    worst = 0.0
    for o, n in zip(before, after, strict=True):
        if (o.shape, o.module_type, o.kind) != (n.shape, n.module_type, n.kind):
            return (f"tap {n.name} changed from {o.shape} {o.module_type} {o.kind} to {n.shape} {n.module_type} "
                    f"{n.kind}"), float("inf")
        a, b = old.value(o.name), new.value(n.name)
        if n.kind == "discrete" and not np.array_equal(a, b):
            return f"oracle changed at discrete tap {n.name}", float("inf")
        rel = _max_rel_change(a, b)
        if rel > UNCHANGED_RTOL:
            return f"oracle changed at tap {n.name} (max rel {rel:.1e})", rel
        worst = max(worst, rel)
    return None, worst


@dataclass
class TapChange:
    """One tap of a regenerated case against the golden it replaces."""

    name: str
    change: str  # "added" | "shape" | "same" | "changed"
    old: np.ndarray | None
    new: np.ndarray
    max_delta: float = 0.0  # max |new - old|
    scale: float = 0.0  # the old tap's absmax


def tap_changes(old: CaseData | None, new: CaseData) -> tuple[list[TapChange], list[str]]:
    """Every tap of `new` in execution order against `old` (all "added" when there is none), and the taps removed
    (the terminal delta and the reviewer's diff page both read these)."""
    rows = []
    for info in new.ordered():
        b = new.value(info.name)
        if old is None or info.name not in old.taps:
            rows.append(TapChange(info.name, "added", None, b))
            continue
        a = old.value(info.name)
        if a.shape != b.shape:
            rows.append(TapChange(info.name, "shape", a, b))
            continue
        d = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        rows.append(TapChange(info.name, "same" if d == 0.0 else "changed", a, b, d, scale))
    removed = [name for name in old.taps if name not in new.taps] if old is not None else []
    return rows, removed


class GoldenStore:
    """Read access to golden/ with integrity checks; `transaction()` for atomic regeneration."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        self._manifest: dict[str, Any] | None = None

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root.parent))
        except ValueError:
            return str(path)

    def case_path(self, component: str, case: str) -> Path:
        return self.root / component / f"{case}.safetensors"

    def settle(self) -> str | None:
        """Complete or roll back a commit a killed run left half done, and remove staging dirs of dead runs;
        returns what was done to a commit (None: nothing to settle)."""
        if not self.root.is_dir():
            return None
        try:
            with dir_lock(self.root):  # waits for a commit in progress in another process
                note = settle(self.root)
                sweep(self.root)
        except OSError as e:
            raise GoldenError(f"cannot lock {self.rel(self.root)} ({one_line(e)})") from None
        return note

    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            self.settle()
            p = self.manifest_path
            if not p.is_file():
                raise GoldenError(f"{self.rel(p)} is missing: {FIX}")
            try:
                data = json.loads(p.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise GoldenError(f"{self.rel(p)} is not valid JSON ({e}): {FIX}") from None
            if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or "cases" not in data:
                raise GoldenError(f"{self.rel(p)} is not a format-{MANIFEST_FORMAT} golden manifest: {FIX}")
            self._manifest = data
        return self._manifest

    def cases(self) -> list[str]:
        return sorted(self.manifest()["cases"])

    def load(self, component: str, case: str) -> CaseData:
        key = f"{component}/{case}"
        entry = self.manifest()["cases"].get(key)
        if entry is None:
            raise GoldenError(f"{self.rel(self.manifest_path)} has no case {key}: run `make golden`")
        path = self.case_path(component, case)
        if not path.is_file():
            raise GoldenError(f"{self.rel(path)} is missing: {FIX}")
        blob = path.read_bytes()  # one read: the bytes checked are the bytes parsed
        digest = hashlib.sha256(blob).hexdigest()
        if digest != entry["sha256"]:
            raise GoldenError(
                f"{self.rel(path)} is corrupt: sha256 {digest[:12]}... != manifest {entry['sha256'][:12]}...; {FIX}"
            )
        from safetensors.numpy import load

        tensors = load(blob)
        taps = {name: TapInfo.from_json(name, d) for name, d in entry["taps"].items()}
        for info in taps.values():
            if info.alias_of is not None:
                continue
            a = tensors.get(info.name)
            if a is None or tuple(a.shape) != info.shape or tensor_sha256(a) != info.sha256:
                raise GoldenError(f"{self.rel(path)}: tensor {info.name!r} is missing or differs from the "
                                  f"manifest; {FIX}")
        return CaseData(component, case, tensors, taps, entry.get("input", {}), entry.get("weights", {}),
                        entry.get("versions", {}), source="golden")

    def transaction(self, refresh_errors: bool = False) -> "GoldenTransaction":
        return GoldenTransaction(self, refresh_errors)


@dataclass
class Staged:
    """One regenerated case: what the manifest will say, what the session judges against, and why."""

    entry: dict[str, Any]
    data: CaseData
    status: str  # "new" | "changed" | "kept" | "refreshed"
    delta: str  # the lines the regeneration prints for this case
    path: Path | None = None  # the staged file (None: the golden file stays)
    old: CaseData | None = None  # the golden it replaces (None: a new case)


class GoldenTransaction:
    """Stage regenerated cases in a locked temp dir inside golden/; `commit` applies them as one atomic change."""

    def __init__(self, store: GoldenStore, refresh_errors: bool = False):
        self.store = store
        self.refresh_errors = refresh_errors
        self.staged: dict[str, Staged] = {}
        self.failed: str | None = None  # set by a staging failure: nothing more is staged or committed
        self._lock_fd: int | None = None
        root = store.root
        try:
            root.mkdir(parents=True, exist_ok=True)
            self.settled = store.settle()
            self.staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
            self._lock_fd = os.open(self.staging, os.O_RDONLY)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # marks it live: _sweep leaves it alone
        except OSError as e:
            self.close()
            raise GoldenError(f"cannot stage golden files in {store.rel(root)} ({one_line(e)}); golden/ is "
                              "unchanged") from None
        store._manifest = None
        try:
            self._old_cases = dict(store.manifest()["cases"])
            self._old_blob: bytes | None = store.manifest_path.read_bytes()
        except (GoldenError, OSError):  # no (valid) manifest: every case is new
            self._old_cases, self._old_blob = {}, None

    def stage(self, data: CaseData) -> CaseData:
        """Stage one regenerated case; returns the case as it will be committed (the stored one when kept)."""
        if self.failed:
            raise GoldenError(self.failed)
        old, why_unreadable = None, None
        if data.key in self._old_cases:
            try:
                old = self.store.load(data.component, data.case)
            except GoldenError as e:
                why_unreadable = f"the previous golden is unreadable ({e})"
        change, worst = oracle_change(old, data) if old is not None else (why_unreadable, 0.0)
        if old is not None and change is None and not self.refresh_errors:
            delta = (f"golden {data.key}: kept: oracle unchanged (max rel {worst:.1e} <= {UNCHANGED_RTOL:g}); "
                     "torch32 errors kept")
            self.staged[data.key] = Staged(self._old_cases[data.key], old, "kept", delta)
            return old
        entry, blob = self._encode(data)
        path = self.staging / entry["file"]
        try:
            write_synced(path, blob)
        except OSError as e:
            self.failed = f"staging golden {data.key} failed ({one_line(e)}); golden/ is unchanged"
            raise GoldenError(self.failed) from None
        size = f"{len(data.taps)} taps, {len(blob) / 1e6:.2f} MB"
        if old is None and change is None:
            status, delta = "new", f"golden {data.key}: new case; {size}"
        elif change is None:
            status, delta = "refreshed", (f"golden {data.key}: errors refreshed (oracle unchanged, max rel "
                                          f"{worst:.1e}); {self._moved_error(old, data)}")
        else:
            status, delta = "changed", f"golden {data.key}: {change}; {size}"
            if old is not None:
                delta += "\n" + self._table(old, data)
        self.staged[data.key] = Staged(entry, data, status, delta, path, old)
        return data

    def adopt(self, staged: Staged) -> None:
        """Take over a case another process staged (a pytest-xdist worker, maybe on another host): its file is
        re-encoded here (the encoding is deterministic; the hash must match), so that one process alone writes
        golden/."""
        if self.failed:
            raise GoldenError(self.failed)
        if staged.path is not None:
            entry, blob = self._encode(staged.data)
            if entry["sha256"] != staged.entry["sha256"]:
                raise GoldenError(f"golden {staged.data.key} from a worker does not re-encode to the bytes it "
                                  "staged; golden/ is unchanged")
            path = self.staging / staged.entry["file"]
            try:
                write_synced(path, blob)
            except OSError as e:
                self.failed = f"staging golden {staged.data.key} failed ({one_line(e)}); golden/ is unchanged"
                raise GoldenError(self.failed) from None
            staged = replace(staged, path=path)
        self.staged[staged.data.key] = staged

    @staticmethod
    def _encode(data: CaseData) -> tuple[dict[str, Any], bytes]:
        stored = {n: np.ascontiguousarray(data.tensors[n]) for n, t in data.taps.items() if t.alias_of is None}
        for name, a in stored.items():
            info = data.taps[name]
            info.sha256 = tensor_sha256(a)
            info.dtype = str(a.dtype)
        blob = safetensors_bytes(stored, {"component": data.component, "case": data.case})
        entry = {
            "file": f"{data.component}/{data.case}.safetensors",
            "sha256": hashlib.sha256(blob).hexdigest(),
            "bytes": len(blob),
            "input": data.input,
            "weights": data.weights,
            "versions": data.versions,
            "environment": environment(),  # what decided the recorded torch float32 errors
            "taps": {t.name: t.to_json() for t in data.ordered()},
        }
        return entry, blob

    def close(self) -> None:
        """Release the staging dir's lock (it stays on disk until `abort`, `commit` or a later sweep)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __del__(self):
        self.close()

    def abort(self) -> None:
        """Drop everything staged; golden/ is left as it is."""
        self.close()
        if hasattr(self, "staging") and not self._journal_names_staging():
            shutil.rmtree(self.staging, ignore_errors=True)
        self.staged.clear()

    def _journal_names_staging(self) -> bool:
        """A commit whose rollback failed leaves a journal that needs this staging dir: keep it for the next run."""
        try:
            return json.loads((self.store.root / JOURNAL).read_text()).get("staging") == self.staging.name
        except (OSError, ValueError, AttributeError):
            return False

    def commit(self) -> str:
        """Apply every staged case as one atomic change of golden/ and return the delta; on failure raise
        GoldenError (one line) with golden/ as it was."""
        if self.failed:
            self.abort()
            raise GoldenError(self.failed)
        root = self.store.root
        staged = sorted(self.staged.items())
        lines = ([self.settled] if self.settled else []) + [s.delta for _, s in staged]
        cases = {**self._old_cases, **{k: s.entry for k, s in staged}}
        blob = (json.dumps({"format": MANIFEST_FORMAT, "cases": dict(sorted(cases.items()))}, indent=1)
                + "\n").encode()
        moves = [(s.path, root / s.entry["file"]) for _, s in staged if s.path is not None]
        try:
            if blob != self._old_blob:
                write_synced(self.staging / "manifest.json", blob)
                moves.append((self.staging / "manifest.json", self.store.manifest_path))  # last: see _plan
            if moves:
                with dir_lock(root):
                    self._apply(moves)
        except OSError as e:
            raise GoldenError(f"committing the regenerated goldens failed ({one_line(e)}); golden/ is "
                              "unchanged") from None
        finally:
            self.abort()
            self.store._manifest = None
        counts = {s: sum(1 for _, x in staged if x.status == s) for s in ("changed", "new", "refreshed", "kept")}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items())
        files = sum(1 for _, s in staged if s.path is not None)
        done = f"{files} file(s) and the manifest replaced atomically" if moves else "golden/ is unchanged"
        return "\n".join(lines + [f"golden: {summary}; {done}"])

    def _apply(self, moves: list[tuple[Path, Path]]) -> None:
        """Journal the moves, rename; on a failed rename roll back. A failed rollback leaves the journal (and this
        staging dir) for the next open to settle, and says so."""
        root = self.store.root
        journal = plan(root, self.staging, moves)
        try:
            forward(root, journal)
        except OSError as e:
            try:
                rollback(root, journal)
            except OSError as e2:
                raise GoldenError(f"committing the regenerated goldens failed ({one_line(e)}) and so did rolling "
                                  f"back ({one_line(e2)}); golden/{JOURNAL} records the unfinished commit, which "
                                  "the next run completes or rolls back") from None
            finish(root, journal)
            raise
        finish(root, journal)

    @staticmethod
    def _moved_error(old: CaseData, new: CaseData) -> str:
        """The tap whose recorded torch32 max_rel moved most, old -> new."""
        pairs = zip(old.ordered(), new.ordered(), strict=True)  # same tap list: the oracle is unchanged
        moves = [(abs(n.torch32.get("max_rel", 0.0) - o.torch32.get("max_rel", 0.0)), n.name,
                  o.torch32.get("max_rel"), n.torch32.get("max_rel")) for o, n in pairs]
        if not moves:
            return "no taps"
        _, name, a, b = max(moves)
        fmt = lambda v: "none" if v is None else f"{v:.3g}"  # noqa: E731
        return f"torch32 max_rel moved most at {name}: {fmt(a)} -> {fmt(b)}"

    @staticmethod
    def _table(old: CaseData, data: CaseData) -> str:
        """Old-vs-new table for one changed case: every tensor with its max abs / relative change."""
        rows, removed = tap_changes(old, data)
        lines = []
        for r in rows:
            if r.change == "added":
                lines.append(f"  + {r.name:<60} new {r.new.shape}")
            elif r.change == "shape":
                lines.append(f"  ~ {r.name:<60} shape {r.old.shape} -> {r.new.shape}")
            else:
                rel = r.max_delta / r.scale if r.scale else 0.0
                lines.append(f"  {'=' if r.change == 'same' else '~'} {r.name:<60} max|new-old| {r.max_delta:.3e}  "
                             f"rel {rel:.3e}")
        lines += [f"  - {name:<60} removed" for name in removed]
        unchanged = sum(r.change == "same" for r in rows)
        return "\n".join([f"  {unchanged} of {len(data.taps)} taps bitwise unchanged"] + lines)
