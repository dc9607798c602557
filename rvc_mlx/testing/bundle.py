"""Case bundles: one golden case as plain files any implementation can run and check itself against, in any
language, with no Python and no policy logic (`rvc-mlx golden export`; the format: docs/golden-format.md).

A bundle directory holds
  inputs.safetensors    the exact input arrays (audio, or features / pitch / noise), injected noise included
  weights.safetensors   the checkpoint's tensors under their original state-dict names, PyTorch layout and dtype
  expected.safetensors  every stored tap of the case (the float64 oracle rounded to float32), PyTorch layout
  case.json             per tap its shape, layouts, order, module type, kind and limits already computed from the
                        policy (relative and absolute), the pitch rules, the inputs' and constants' meaning
Exporting reads the synthetic checkpoints (torch, weights_only) and the golden store; checking a dump does not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rvc_mlx.outputs import atomic_write_bytes, safetensors_bytes
from rvc_mlx.testing.golden import CaseData, GoldenError, GoldenStore, json_round_trip
from rvc_mlx.testing.report import json_safe
from rvc_mlx.testing.tolerances import Policy

FORMAT = "rvc-mlx-case/1"
FILES = ("inputs.safetensors", "weights.safetensors", "expected.safetensors", "case.json")
# the MLX layout names of rvc_mlx.testing.taps.LAYOUTS -> the axes of the PyTorch-layout value stored here
TORCH_AXES = {"NHWC": "NCHW", "NLC": "NCL", "same": "same"}


def tap_limits(component: str, name: str, info, value: np.ndarray, policy: Policy) -> dict[str, Any]:
    """What the harness allows for one tap: per bounded metric the relative limit K x torch-fp32 + floor and the
    absolute one it implies for this reference (max |error| for max_rel, RMSE for rmse_rel)."""
    if info.kind == "discrete":
        return {"exact": True}
    if info.kind == "f0":
        return {"cents_p99": policy.pitch.cents_p99, "voicing_agreement": policy.pitch.voicing_agreement}
    rule = policy.rule(component, name)
    ref = np.asarray(value, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    scale = {"max_rel": float(np.max(np.abs(ref))) if ref.size else 0.0,
             "rmse_rel": float(np.sqrt(np.mean(ref * ref))) if ref.size else 0.0}
    out: dict[str, Any] = {}
    for metric in rule.metrics:
        rel = rule.limit(float(info.torch32.get(metric, 0.0)))
        out[metric] = {"relative": rel, "absolute": rel * scale[metric],
                       "torch_fp32": float(info.torch32.get(metric, 0.0))}
    return out


def _arrays(prefix: str, value: Any, arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
    """Flatten one input (array, noise dataclass, number, string) into named arrays and scalars."""
    if isinstance(value, np.ndarray):
        arrays[prefix] = np.ascontiguousarray(value)
    elif hasattr(value, "__dataclass_fields__"):  # SynthNoise: eps_zp, eps_sine
        for field_name in value.__dataclass_fields__:
            v = getattr(value, field_name)
            if v is not None:
                _arrays(f"{prefix}.{field_name}", v, arrays, scalars)
    elif isinstance(value, (bool, int, float, str, np.integer, np.floating)) or value is None:
        scalars[prefix] = value.item() if isinstance(value, np.generic) else value
    else:
        raise TypeError(f"input {prefix!r}: cannot export a {type(value).__name__}")


def _injected(comp, case, ref: CaseData) -> dict[str, np.ndarray]:
    """Noise the model draws inside, generated here from its seed (docs/golden-format.md, Noise)."""
    from rvc_common.config import CREPEConfig, synth_variants
    from rvc_common.inputs import crepe_dither, make_noise

    out: dict[str, np.ndarray] = {}
    if comp.name == "crepe":
        frames = ref.taps["crepe.f0"].shape[0] if "crepe.f0" in ref.taps else None
        if frames is not None:
            out["crepe.dither"] = crepe_dither(frames, 0, CREPEConfig())
    if comp.name == "pipeline":
        cfg = synth_variants()[case.variant]
        segments = sorted((t for t in ref.taps if t.split("#")[0] == "pipeline.synth.noise"),
                          key=lambda t: ref.taps[t].order)
        for i, name in enumerate(segments):
            noise = make_noise(cfg, ref.taps[name].shape[-1], case.seed + i)
            out[f"segment{i}.noise.eps_zp"] = noise.eps_zp
            if noise.eps_sine is not None:
                out[f"segment{i}.noise.eps_sine"] = noise.eps_sine
    return out


def _weights(comp, case) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    w = comp.weights(None, case)
    if comp.name != "pipeline":
        return comp.state_dict(w.path), dict(w.info)
    from rvc_mlx.testing.components import registry

    models = comp._models(w)
    comps = registry()
    state = {f"synth/{k}": v for k, v in comps["synth"].state_dict(models.synth).items()}
    state.update({f"hubert/{k}": v for k, v in comps["hubert"].state_dict(models.hubert).items()})
    state.update({f"rmvpe/{k}": v for k, v in comps["rmvpe"].state_dict(models.pitch["rmvpe"]).items()})
    if models.index is not None:
        from rvc_mlx.index import FeatureIndex

        # the vectors retrieval blends, and the faiss file itself (its IVF lists decide which are searched)
        state["index/vectors"] = np.array(FeatureIndex.read(models.index).vectors)
        state["index/faiss_file"] = np.frombuffer(Path(models.index).read_bytes(), dtype=np.uint8).copy()
    return state, dict(w.info)


def describe_taps(comp, case, ref: CaseData, policy: Policy) -> list[dict[str, Any]]:
    """case.json's `taps`: per golden tap, in execution order, what it is, its layouts and its limits."""
    from rvc_mlx.testing.foreign import mlx_layout

    ignore = comp.pitch_ignore(ref, policy)
    taps = []
    for info in ref.ordered():
        layout = mlx_layout(comp, info.name, info.module_type)
        entry = {"name": info.name, "order": info.order, "module_type": info.module_type, "kind": info.kind,
                 "shape": list(info.shape), "dtype": "float32", "layout": TORCH_AXES[layout],
                 "mlx_layout": layout, "shipped": comp.shipped(case, info.name),
                 "limits": tap_limits(comp.name, info.name, info, ref.value(info.name), policy)}
        if info.name in ignore:
            entry["ignore_frames"] = [int(i) for i in np.flatnonzero(ignore[info.name])]
        taps.append(entry)
    return taps


def build(component: str, case_name: str, store: GoldenStore, policy: Policy) -> dict[str, Any]:
    """The bundle of one golden case: {file name: bytes}."""
    from rvc_mlx.testing.components import CHUNK_CONSTANTS, registry

    comp = registry()[component]
    case = comp.spec.case(case_name)
    ref = store.load(component, case_name)
    if comp.name == "pipeline" and case.f0_method != "rmvpe":
        raise ValueError(f"{ref.key}: pipeline bundles hold RMVPE only so far (CREPE's dither and FCPE's weights "
                         "inside the pipeline are not exported)")
    inputs, input_info = comp.load_input(case)
    if json_round_trip(input_info) != json_round_trip(ref.input):
        raise GoldenError(f"golden {ref.key} was made from other inputs than golden/cases.toml gives now: run "
                          "`make golden`, then export")
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, Any] = {}
    if isinstance(inputs, dict):
        for k, v in inputs.items():
            _arrays(k, v, arrays, scalars)
    else:
        _arrays("audio", inputs, arrays, scalars)
    injected = _injected(comp, case, ref)
    arrays.update(injected)
    state, provenance = _weights(comp, case)
    if provenance.get("sha256") != ref.weights.get("sha256"):
        raise GoldenError(f"golden {ref.key} was made from other weights than the checkpoint exported now: run "
                          "`make golden`, then export")
    taps = describe_taps(comp, case, ref, policy)
    doc = {
        "format": FORMAT,
        "component": component,
        "case": case_name,
        "inputs": {"file": "inputs.safetensors",
                   "arrays": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in sorted(arrays.items())},
                   "scalars": scalars, "injected_noise": sorted(injected),
                   "provenance": ref.input},
        # config values the case sets (a port applies them) and MLX-only split sizes (exact by construction)
        "constants": {k: v for k, v in case.constants.items() if k not in CHUNK_CONSTANTS},
        "mlx_only_constants": {k: v for k, v in case.constants.items() if k in CHUNK_CONSTANTS},
        "weights": {"file": "weights.safetensors", "tensors": len(state), "provenance": provenance},
        "expected": {"file": "expected.safetensors", "taps": len(taps)},
        "policy": {"K": policy.K, "floor": policy.floor, "metrics": list(policy.metrics),
                   "pitch": {"cents_p99": policy.pitch.cents_p99,
                             "voicing_agreement": policy.pitch.voicing_agreement}},
        "taps": taps,
    }
    expected = {t["name"]: np.ascontiguousarray(ref.value(t["name"]), dtype=np.float32) for t in taps}
    meta = {"format": FORMAT, "component": component, "case": case_name}
    return {
        "inputs.safetensors": safetensors_bytes(arrays, meta),
        "weights.safetensors": safetensors_bytes(state, meta),
        "expected.safetensors": safetensors_bytes(expected, meta),
        "case.json": (json.dumps(json_safe(doc), indent=1) + "\n").encode(),  # strict JSON: no NaN/Inf
    }


def export(component: str, case_name: str, out_dir: Path, store: GoldenStore, policy: Policy) -> Path:
    """Write one case's bundle into `out_dir` (created; each file atomically); returns the directory."""
    files = build(component, case_name, store, policy)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        atomic_write_bytes(out_dir / name, files[name])
    return out_dir


def export_all(out_dir: Path, store: GoldenStore, policy: Policy) -> list[Path]:
    """A bundle per golden case, in `out_dir/<component>/<case>/`."""
    done = []
    for key in sorted(store.manifest()["cases"]):
        component, case_name = key.split("/", 1)
        done.append(export(component, case_name, Path(out_dir) / component / case_name, store, policy))
    return done
