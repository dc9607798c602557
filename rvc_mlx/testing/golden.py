"""Golden store: `golden/<component>/<case>.safetensors` + `golden/manifest.json`.

Each case file holds the float64 oracle's taps rounded to float32 (taps bitwise equal to an earlier tap are
stored once and listed as aliases). The manifest records per case the input, the weights, the versions that
made it, and per tap: shape, dtype, sha256, summary stats, execution order, module type, check kind and
PyTorch float32's error against the stored reference (so MLX can be judged without importing torch).
Loading verifies every sha256 and fails with one line naming the file and the fix. Regeneration stages all
files in a temporary directory, then renames each into place and writes the manifest last, atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rvc_mlx.checkpoints import atomic_write_bytes

MANIFEST_FORMAT = 1
FIX = "restore it with `git checkout golden/` or regenerate with `make golden`"


class GoldenError(Exception):
    """A golden file or the manifest is missing, corrupt, or inconsistent (message: one line + the fix)."""


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


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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

    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
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
        digest = _file_sha256(path)
        if digest != entry["sha256"]:
            raise GoldenError(
                f"{self.rel(path)} is corrupt: sha256 {digest[:12]}... != manifest {entry['sha256'][:12]}...; {FIX}"
            )
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
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

    def transaction(self) -> "GoldenTransaction":
        return GoldenTransaction(self)


class GoldenTransaction:
    """Stage new cases in a temp dir inside golden/; `commit` renames them into place, manifest last."""

    def __init__(self, store: GoldenStore):
        self.store = store
        store.root.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=store.root))
        self.staged: dict[str, tuple[Path, dict[str, Any], CaseData]] = {}

    def stage(self, data: CaseData) -> None:
        from safetensors.numpy import save

        stored = {n: np.ascontiguousarray(data.tensors[n]) for n, t in data.taps.items() if t.alias_of is None}
        for name, a in stored.items():
            info = data.taps[name]
            info.sha256 = tensor_sha256(a)
            info.dtype = str(a.dtype)
        blob = save(stored, metadata={"component": data.component, "case": data.case})
        path = self.staging / data.component / f"{data.case}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        entry = {
            "file": f"{data.component}/{data.case}.safetensors",
            "sha256": hashlib.sha256(blob).hexdigest(),
            "bytes": len(blob),
            "input": data.input,
            "weights": data.weights,
            "versions": data.versions,
            "taps": {t.name: t.to_json() for t in data.ordered()},
        }
        self.staged[data.key] = (path, entry, data)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staged.clear()

    def commit(self) -> str:
        """Move staged files into place (each rename atomic), then write the manifest; returns the delta."""
        try:
            old_manifest = self.store.manifest() if self.store.manifest_path.is_file() else None
        except GoldenError:
            old_manifest = None
        delta = []
        for key, (_, entry, data) in sorted(self.staged.items()):
            delta.append(self._delta(key, entry, data))
        manifest = old_manifest or {"format": MANIFEST_FORMAT, "cases": {}}
        manifest = {"format": MANIFEST_FORMAT, "cases": dict(manifest["cases"])}
        for key, (path, entry, _) in self.staged.items():
            target = self.store.root / entry["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            manifest["cases"][key] = entry
        manifest["cases"] = dict(sorted(manifest["cases"].items()))
        atomic_write_bytes(self.store.manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())
        self.store._manifest = None
        self.abort()
        return "\n".join(delta)

    def _delta(self, key: str, entry: dict[str, Any], data: CaseData) -> str:
        """Old-vs-new table for one case: every tensor with its max abs / relative change."""
        component, case = key.split("/", 1)
        lines = [f"golden {key}: {len(entry['taps'])} taps, {entry['bytes'] / 1e6:.2f} MB"]
        try:
            old = self.store.load(component, case)
        except GoldenError as e:
            lines.append(f"  (no previous golden to compare: {e})")
            return "\n".join(lines)
        unchanged = 0
        for info in data.ordered():
            if info.name not in old.taps:
                lines.append(f"  + {info.name:60s} new {info.shape}")
                continue
            a, b = old.value(info.name), data.value(info.name)
            if a.shape != b.shape:
                lines.append(f"  ~ {info.name:60s} shape {a.shape} -> {b.shape}")
                continue
            d = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
            if d == 0.0:
                unchanged += 1
            scale = float(np.max(np.abs(a))) if a.size else 0.0
            rel = d / scale if scale else 0.0
            lines.append(f"  {'=' if d == 0 else '~'} {info.name:60s} max|new-old| {d:.3e}  rel {rel:.3e}")
        for name in old.taps:
            if name not in data.taps:
                lines.append(f"  - {name:60s} removed")
        lines.insert(1, f"  {unchanged} of {len(data.taps)} taps bitwise unchanged")
        return "\n".join(lines)
