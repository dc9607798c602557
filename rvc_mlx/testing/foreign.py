"""`rvc-mlx check`: judge another implementation's activation dump (Swift, C++, Core ML, ONNX ...) against a golden
case with the harness's policy and first-divergence blame. Pure numpy + safetensors: no torch, no MLX.

A dump is a safetensors file of float arrays named by tap (docs/golden-format.md, Dumps). Ports that name modules
differently give a name map (TOML):

    [names]                        # golden name pattern = dump name pattern, applied in order, each once
    "dec.ups.{i}" = "dec.up_{i}"
    "flow.flows.{2i}" = "flow.flow_{i}"     # index arithmetic: golden 2i -> dump i (odd indices do not match)
    "*.attn_layers.{i}" = "*.attn_{i}"      # `*` matches any text, carried over in order

    [absent]                       # taps this port does not compute: listed, not judged (never silently)
    taps = ["rmvpe.mel"]

A pattern matches a leading part of the tap name that ends at a component boundary (`.`, `:`, `#` or the end),
so a rule for a module renames its children's taps too.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from rvc_mlx.testing.compare import CaseResult, compare_case
from rvc_mlx.testing.golden import GoldenStore
from rvc_mlx.testing.taps import LAYOUTS, TapError, to_torch_layout
from rvc_mlx.testing.tolerances import Policy

LAYOUT_MODES = ("torch", "mlx")
_INDEX = re.compile(r"\{(\d*)([a-z])([+-]\d+)?\}")


class DumpError(ValueError):
    """A dump, name map or layout file that cannot be used (exit 2, one line)."""


# ----------------------------------------------------------------------------------------------- name maps
def _affine(m: re.Match) -> tuple[int, str, int]:
    """`{2i+1}` -> (2, "i", 1): the index a x var + b."""
    return int(m.group(1) or 1), m.group(2), int(m.group(3) or 0)


@lru_cache(maxsize=None)  # each rule is matched against every tap name
def _golden_regex(pattern: str) -> tuple[re.Pattern, list[tuple[str, Any]]]:
    """Regex for a golden-side pattern and, per group, what it binds: ("glob", None) or ("index", (a, var, b))."""
    parts, binds, pos = [], [], 0
    for m in re.finditer(_INDEX.pattern + r"|\*", pattern):
        parts.append(re.escape(pattern[pos:m.start()]))
        if m.group(0) == "*":
            parts.append("(.*?)")
            binds.append(("glob", None))
        else:
            parts.append(r"(\d+)")
            binds.append(("index", _affine(m)))
        pos = m.end()
    parts.append(re.escape(pattern[pos:]))
    return re.compile("^" + "".join(parts) + r"(?=$|[.:#])"), binds


@dataclass
class NameMap:
    """Golden tap name -> the port's name, by ordered rules; plus the taps the port declares it lacks."""

    rules: list[tuple[str, str]] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    source: str = "<identity>"

    @classmethod
    def read(cls, path: str | Path) -> "NameMap":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise DumpError(f"--names {path}: no such file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise DumpError(f"--names {path}: not valid TOML ({str(e).splitlines()[0]})") from None
        unknown = set(data) - {"names", "absent"}
        if unknown:
            raise DumpError(f"--names {path}: unknown tables {sorted(unknown)} (expected [names] and [absent])")
        names = data.get("names", {})
        absent = data.get("absent", {}).get("taps", [])
        if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
            raise DumpError(f"--names {path}: [names] must map golden name patterns to dump name patterns")
        if not isinstance(absent, list) or not all(isinstance(v, str) for v in absent):
            raise DumpError(f"--names {path}: [absent] taps must be a list of tap-name globs")
        out = cls(list(names.items()), list(absent), str(path))
        for golden, dump in out.rules:
            _, binds = _golden_regex(golden)
            if dump.count("*") != golden.count("*"):
                raise DumpError(f"--names {path}: rule {golden!r} = {dump!r} needs as many `*` on both sides")
            bound = {spec[1] for kind, spec in binds if kind == "index"}
            unbound = sorted({m.group(2) for m in _INDEX.finditer(dump)} - bound)
            if unbound:
                raise DumpError(f"--names {path}: rule {golden!r} = {dump!r} uses {{{unbound[0]}}}, which the "
                                "golden side does not bind")
        return out

    def is_absent(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.absent)

    def dump_name(self, name: str) -> str:
        for golden, dump in self.rules:
            name = _apply(golden, dump, name)
        return name


def _apply(golden: str, dump: str, name: str) -> str:
    regex, binds = _golden_regex(golden)
    m = regex.match(name)
    if m is None:
        return name
    globs, env = [], {}
    for (kind, spec), text in zip(binds, m.groups(), strict=True):
        if kind == "glob":
            globs.append(text)
            continue
        a, var, b = spec
        n = int(text) - b
        if n < 0 or n % a:
            return name  # golden index not of the form a*i + b: the rule does not apply
        if env.setdefault(var, n // a) != n // a:
            return name
    def index(mm: re.Match) -> str:
        a, var, b = _affine(mm)
        if var not in env:
            raise DumpError(f"name rule {golden!r} = {dump!r}: {{{var}}} is not bound on the golden side")
        return str(a * env[var] + b)

    out = _INDEX.sub(index, dump)
    for g in globs:
        out = out.replace("*", g, 1)
    return out + name[m.end():]


# ----------------------------------------------------------------------------------------------- layouts
def mlx_layout(comp, name: str, module_type: str) -> str:
    """The layout MLX holds a tap in: the component's LayoutMap for module outputs, its `extra_layouts` for the
    taps model code names (`instrument.tap(..., layout=...)`)."""
    if module_type == "tap":
        for pattern, layout in getattr(comp, "extra_layouts", {}).items():
            if fnmatch.fnmatchcase(name.split("#")[0], pattern):
                return layout
        return "same"
    return comp.layouts.output(name)


def read_layout_file(path: str | Path) -> dict[str, str]:
    """A per-tap layout file (TOML): tap-name glob = MLX layout name (same, NHWC, NLC)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DumpError(f"--layout {path}: no such file (use torch, mlx or a TOML file of tap globs)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DumpError(f"--layout {path}: not valid TOML ({str(e).splitlines()[0]})") from None
    bad = {k: v for k, v in data.items() if v not in LAYOUTS}
    if bad:
        raise DumpError(f"--layout {path}: unknown layouts {bad} (known: {sorted(LAYOUTS)})")
    return data


# ----------------------------------------------------------------------------------------------- dumps
def load_dump(path: str | Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = Path(path)
    if not path.is_file():
        raise DumpError(f"{path}: no such dump file")
    try:
        return dict(load(path.read_bytes()))
    except (SafetensorError, ValueError, OSError) as e:
        raise DumpError(f"{path}: not a safetensors file ({str(e).splitlines()[0] if str(e) else 'unreadable'})") \
            from None


@dataclass
class DumpCheck:
    """A foreign dump judged: the case result, and what the name map left over."""

    result: CaseResult
    unexpected: list[str]
    absent: list[str]

    @property
    def passed(self) -> bool:
        return self.result.passed

    def message(self) -> str:
        r = self.result
        return r.failure_message() if not r.passed else "\n".join([r.blame_line(), *r.notes])


def check(dump: dict[str, np.ndarray], component: str, case: str, store: GoldenStore, policy: Policy,
          names: NameMap | None = None, layout: str | dict[str, str] = "torch", label: str = "dump") -> DumpCheck:
    """Judge `dump` against golden `component/case`: every golden tap the port does not declare absent must be
    in the dump (under its mapped name, converted to PyTorch layout) and within the policy."""
    from rvc_mlx.testing.components import registry

    names = names or NameMap()
    comp = registry()[component]
    ref = store.load(component, case)
    values: dict[str, np.ndarray] = {}
    looked: dict[str, str] = {}
    judged, absent = set(), []
    for info in ref.ordered():
        if names.is_absent(info.name):
            absent.append(info.name)
            continue
        judged.add(info.name)
        key = names.dump_name(info.name)
        looked[info.name] = key
        if key not in dump:
            continue
        value = np.asarray(dump[key])
        if layout == "mlx":
            lay = mlx_layout(comp, info.name, info.module_type)
        elif isinstance(layout, dict):
            lay = next((v for k, v in layout.items() if fnmatch.fnmatchcase(info.name, k)), "same")
        else:
            lay = "same"
        try:
            values[info.name] = to_torch_layout(value, lay, info.name)
        except TapError:  # wrong rank for the layout: judged as a shape mismatch
            values[info.name] = value
    result = compare_case(ref, values, policy, comp.pitch_ignore(ref, policy), judged, subject="dump")
    result.path, result.execution = "dump", label
    for t in result.taps:
        if t.status == "missing":
            renamed = "" if looked[t.name] == t.name else f" (mapped from {t.name})"
            t.detail = f"not in the dump under {looked[t.name]!r}{renamed}"
    unexpected = sorted(set(dump) - set(looked.values()))
    if absent:
        result.notes.append(f"declared absent by {names.source}, not judged ({len(absent)}): "
                            + ", ".join(absent[:8]) + (" ..." if len(absent) > 8 else ""))
    if unexpected:
        result.notes.append(f"in the dump but no golden tap maps to them ({len(unexpected)}): "
                            + ", ".join(unexpected[:8]) + (" ..." if len(unexpected) > 8 else ""))
    return DumpCheck(result, unexpected, absent)
