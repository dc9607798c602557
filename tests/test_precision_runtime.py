"""Reduced precision at run time: every component runs in float16 and bfloat16 close to float32, a plan keeps
its layers (and each model's FLOAT32 table) in float32 and they really compute in float32, `from_checkpoint`,
the pitch loaders, `Pipeline.load` and `rvc-mlx convert --dtype` apply the committed plans. Inputs are short:
half precision on MLX's CPU backend is slow (no half GEMM kernels)."""

from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf

from rvc_mlx import fastmath, precision
from rvc_mlx.precision import Plan, PrecisionError
from rvc_mlx.testing.components import registry
from rvc_mlx.testing.signals import read_wav

INPUTS = Path(__file__).resolve().parents[1] / "golden" / "inputs"
HARMONIC = read_wav(INPUTS / "harmonic.wav")[8000:11200]  # 0.2 s of a known-F0 tone: 21 frames, voiced
PITCH = ("rmvpe", "crepe-tiny", "crepe-full", "fcpe")
# component -> (registry name, case whose weights and input it runs, plan component name)
SUBJECTS = {"rmvpe": ("rmvpe", "harmonic", "rmvpe"), "hubert": ("hubert", "speech", "hubert"),
            "crepe-tiny": ("crepe", "tiny-harmonic", "crepe-tiny"), "crepe-full": ("crepe", "full-harmonic", "crepe"),
            "fcpe": ("fcpe", "harmonic", "fcpe"), "synth": ("synth", "v2-40k-f0-all", "synth")}


@pytest.fixture(scope="module")
def components():
    return registry()


class Subject:
    """One component's checkpoint and input, and how to load and run its MLX predictor."""

    def __init__(self, components, key: str):
        name, case, self.plan_name = SUBJECTS[key]
        self.comp = components[name]
        self.case = self.comp.spec.case(case)
        self.path = self.comp.weights(None, self.case).path
        self.input = HARMONIC if key in PITCH else self.comp.load_input(self.case)[0]

    def load(self, **kwargs):
        return self.comp.mlx_class().from_checkpoint(self.path, **kwargs)

    def run(self, predictor) -> np.ndarray:
        out = self.comp.run_mlx(predictor, self.input)
        return precision.host(out) if isinstance(out, mx.array) else np.asarray(out, dtype=np.float64)


@pytest.fixture(scope="module")
def subjects(components):
    return {key: Subject(components, key) for key in SUBJECTS}


def _array_dtypes(model) -> dict[str, str]:
    return {f"{path}.{k}".lstrip("."): precision.dtype_name(m[k].dtype)
            for path, m in model.named_modules() for k in precision.own_arrays(m)}


def _in_table(name: str, model) -> bool:
    return precision.matches(name, tuple(model.FLOAT32))


# ----------------------------------------------------------------------------------------------- the tables
@pytest.mark.parametrize("key", ["rmvpe", "hubert", "crepe-tiny", "fcpe", "synth"])
def test_each_float32_table_names_parts_of_its_model_with_a_one_line_reason(subjects, key):
    model = subjects[key].load().model
    names = [p for p, _ in model.named_modules() if p] + list(_array_dtypes(model))
    assert isinstance(type(model).__dict__.get("FLOAT32"), dict), f"{type(model).__name__} has no FLOAT32 table"
    for glob, reason in model.FLOAT32.items():
        assert isinstance(reason, str) and reason.strip() and "\n" not in reason, glob
        assert any(precision.matches(n, (glob,)) for n in names), f"FLOAT32 entry {glob!r} matches nothing"


@pytest.mark.parametrize("key", ["hubert", "fcpe", "synth"])  # the models whose table is not empty
def test_the_float32_table_stays_float32_under_any_plan(subjects, key):
    model = subjects[key].load().model
    precision.apply(model, Plan("bfloat16", layers={"*": "float16"}))
    dtypes = _array_dtypes(model)
    kept = {n for n in dtypes if _in_table(n, model)}
    assert kept, "the table keeps no array"
    assert {dtypes[n] for n in kept} == {"float32"}
    assert {d for n, d in dtypes.items() if n not in kept} == {"float16"}  # layers beat dtype; the table beats both


def test_a_plan_glob_that_matches_nothing_is_an_error(subjects):
    model = subjects["crepe-tiny"].load().model
    for plan in (Plan("float16", keep=("conv9",)), Plan("float16", layers={"classifier.nope": "float32"})):
        with pytest.raises(PrecisionError, match="matches no module of Crepe"):
            precision.apply(model, plan)


@contextmanager
def _output_dtypes(model, paths):
    """The dtype of each listed module's output (first of a tuple) in the block's calls."""
    seen, swapped = {}, []
    for path, module in model.named_modules():
        if path in paths:
            cls = type(module)

            def call(self, *args, _cls=cls, _path=path, **kwargs):
                out = _cls.__call__(self, *args, **kwargs)
                seen[_path] = (out[0] if isinstance(out, tuple) else out).dtype
                return out

            module.__class__ = type(cls.__name__, (cls,), {"__call__": call})
            swapped.append((module, cls))
    try:
        yield seen
    finally:
        for module, cls in swapped:
            module.__class__ = cls


def test_a_plan_keeps_its_layers_in_float32_and_they_compute_in_float32(subjects):
    """RMVPE in float16 with its input BatchNorm, one fused conv of the first block and the BiGRU kept: their
    weights stay float32, their outputs are float32 and their neighbours' float16; F0 stays close."""
    s = subjects["rmvpe"]
    ref = s.run(s.load())
    rmvpe = s.load()
    keep = ("unet.encoder.bn", "unet.encoder.layers.0.conv.0.conv.0", "fc.0")
    precision.apply(rmvpe.model, Plan("float16", keep))
    dtypes = _array_dtypes(rmvpe.model)
    for name, dtype in dtypes.items():
        assert dtype == ("float32" if precision.matches(name, keep) else "float16"), name
    watched = ("unet.encoder.bn", "fc.0", "fc.0.gru", "cnn", "fc.1")
    with _output_dtypes(rmvpe.model, watched) as seen:
        f0 = s.run(rmvpe)
    assert seen == {"unet.encoder.bn": mx.float32, "fc.0": mx.float32, "fc.0.gru": mx.float32,
                    "cnn": mx.float16, "fc.1": mx.float16}
    _assert_pitch_close(f0, ref)


# ----------------------------------------------------------------------------------------------- every component
def _assert_pitch_close(f0: np.ndarray, ref: np.ndarray) -> None:
    assert np.isfinite(f0).all()
    both = (f0 > 0) & (ref > 0)
    assert both.sum() >= 0.8 * (ref > 0).sum() and (ref > 0).sum() >= 10, (f0, ref)
    cents = 1200 * np.abs(np.log2(f0[both] / ref[both]))
    assert np.mean(cents < 50) >= 0.9, cents


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
# crepe-full: ~30 s per dtype here; RMVPE, HuBERT and FCPE run in both dtypes in make test with their committed
# plans (tests/test_precision_study.py)
@pytest.mark.parametrize("key", ["synth", "crepe-tiny", *(pytest.param(k, marks=pytest.mark.slow)
                                                          for k in ("crepe-full", "rmvpe", "hubert", "fcpe"))])
def test_each_component_runs_in_half_precision_close_to_float32(subjects, key, dtype):
    s = subjects[key]
    ref = s.run(s.load())
    predictor = s.load()
    precision.apply(predictor.model, dtype)
    out = s.run(predictor)
    if key in PITCH:
        _assert_pitch_close(out, ref)
    else:
        assert out.dtype == np.float32 and np.isfinite(out).all()
        rel = np.sqrt(np.mean((out.astype(np.float64) - ref) ** 2) / np.mean(ref.astype(np.float64) ** 2))
        assert rel < 5e-2, rel


def test_half_transcendentals_take_mlx_ops_and_softmax_accumulates_in_float32():
    x = mx.array(np.clip(np.random.default_rng(0).normal(0, 4, (8, 512)), -10, 10).astype(np.float32))  # e^10 < 65504
    for dt, ulp in ((mx.float16, 2 ** -10), (mx.bfloat16, 2 ** -7)):
        xh = x.astype(dt)
        for f in (fastmath.exp, fastmath.sigmoid, fastmath.tanh, fastmath.silu, fastmath.gelu):
            y = f(xh)
            assert y.dtype == dt, f.__name__  # fastmath's float32 bit tricks would promote (or garble) a half input
            ref = np.array(f(xh.astype(mx.float32)))
            assert np.max(np.abs(precision.host(y) - ref) / (np.abs(ref) + 0.25)) < 4 * ulp, f.__name__
        y, ref = fastmath.softmax(xh), np.array(fastmath.softmax(xh.astype(mx.float32)))
        assert y.dtype == dt
        big = ref > 1e-4
        # accumulated in half, the error is ~15x this (MLX's softmax without precise=True)
        assert np.max(np.abs(precision.host(y) - ref)[big] / ref[big]) < ulp


def test_fcpe_groupnorm_of_large_half_activations_does_not_overflow():
    from rvc_mlx.fcpe import GroupNorm

    norm = GroupNorm(4, 512)
    x = mx.array(np.random.default_rng(0).normal(0, 600, (1, 40, 512)).astype(np.float32))  # squares > 65504
    ref = np.array(norm(x))
    precision.apply(norm, "float16")
    y = norm(x.astype(mx.float16))
    assert y.dtype == mx.float16
    np.testing.assert_allclose(precision.host(y), ref, atol=1e-2)


# ----------------------------------------------------------------------------------------------- loading
@pytest.fixture
def plan_file(tmp_path, monkeypatch):
    """A committed-plan file whose entries keep one distinctive module of each component in float32."""
    path = tmp_path / "precision.toml"
    path.write_text('[rmvpe.float16]\nkeep = ["fc"]\n[hubert.float16]\nkeep = ["final_proj"]\n'
                    '[crepe.float16]\nkeep = ["classifier"]\n[crepe-tiny.float16]\nkeep = ["conv1"]\n'
                    '[fcpe.float16]\nkeep = ["output_proj"]\n[synth.float16]\nkeep = ["emb_g"]\n'
                    '[pipeline.float16]\nkeep.rmvpe = ["*"]\nkeep.synth = ["dec.ups"]\n')
    monkeypatch.setattr(precision, "PLAN_FILE", path)
    return {"rmvpe": "fc", "hubert": "final_proj", "crepe": "classifier", "crepe-tiny": "conv1", "fcpe": "output_proj",
            "synth": "emb_g"}


@pytest.mark.parametrize("key", list(SUBJECTS))
def test_from_checkpoint_dtype_applies_the_committed_plan_of_its_component(subjects, plan_file, key):
    s = subjects[key]
    keep = plan_file[s.plan_name]
    model = s.load(dtype="float16").model
    assert precision.plan_of(model) == Plan("float16", (keep,))
    dtypes = _array_dtypes(model)
    assert {d for n, d in dtypes.items() if precision.matches(n, (keep,))} == {"float32"}
    assert "float16" in dtypes.values()
    bf16 = s.load(dtype="bfloat16").model  # no entry in the file: the plain reduced model (and its table)
    assert precision.plan_of(bf16) == Plan("bfloat16")


def test_from_checkpoint_takes_an_explicit_plan_and_float32_leaves_the_model_untouched(subjects, plan_file):
    s = subjects["fcpe"]
    model = s.load(plan=Plan("bfloat16", ("input_stack",))).model
    assert precision.plan_of(model) == Plan("bfloat16", ("input_stack",))
    assert model.input_stack[0].weight.dtype == mx.float32 and model.output_proj.weight.dtype == mx.bfloat16
    with pytest.raises(PrecisionError, match="contradicts"):
        s.load(dtype="float16", plan=Plan("bfloat16"))
    plain = s.load(dtype="float32").model
    assert not hasattr(plain, "_precision")
    assert not any(getattr(type(m), "_casts_inputs", False) for _, m in plain.named_modules())  # no wrappers


def test_pipeline_load_applies_the_pipelines_plan_and_each_models_own_where_it_names_none(subjects, plan_file):
    from rvc_mlx.pipeline import Pipeline, pitch_loaders
    from rvc_mlx.testing.synthetic import cached_checkpoint

    loaders = pitch_loaders(rmvpe=subjects["rmvpe"].path, crepe_tiny=subjects["crepe-tiny"].path,
                            fcpe=subjects["fcpe"].path, dtype="float16")
    assert precision.plan_of(loaders["crepe-tiny"]().model) == Plan("float16", ("conv1",))  # not in the entry
    assert precision.plan_of(loaders["fcpe"]().model) == Plan("float16", ("output_proj",))
    pipe = Pipeline.load(cached_checkpoint("synth-v2-40k-f0"), cached_checkpoint("contentvec"),
                         rmvpe=subjects["rmvpe"].path, dtype="float16")
    assert precision.plan_of(pipe.hubert.model) == Plan("float16", ("final_proj",))
    assert precision.plan_of(pipe.synth.model) == Plan("float16", ("dec.ups",))
    rmvpe = pipe.pitch_model("rmvpe").model
    assert precision.plan_of(rmvpe) == Plan("float16", ("*",))
    assert set(_array_dtypes(rmvpe).values()) == {"float32"}  # "*": the whole model
    with pytest.raises(PrecisionError, match="per model"):
        precision.load_plan("pipeline", "float16")
    pipe = Pipeline.load(cached_checkpoint("synth-v2-40k-f0"), cached_checkpoint("contentvec"),
                         rmvpe=subjects["rmvpe"].path, dtype="bfloat16")
    for model in (pipe.hubert.model, pipe.synth.model, pipe.pitch_model("rmvpe").model):
        assert precision.plan_of(model) == Plan("bfloat16")  # no entry in the file: the plain reduced models


# ----------------------------------------------------------------------------------------------- the CLI
def _convert(tmp_path, monkeypatch, samples: int, x_pad: float, dtypes, f0_method: str) -> dict[str, np.ndarray]:
    """`rvc-mlx convert --dtype D` on `samples` of speech, padded by `x_pad` s (the original's 1 s would take minutes
    in half precision on this CPU), with the plain reduced models (no plan file): D -> the written audio."""
    import rvc_mlx.pipeline
    from rvc_common.config import PipelineConfig
    from rvc_mlx.cli import main
    from rvc_mlx.testing.synthetic import cached_checkpoint

    class ShortPipeline(rvc_mlx.pipeline.Pipeline):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, cfg=PipelineConfig(x_pad=x_pad), **kwargs)

    monkeypatch.setattr(rvc_mlx.pipeline, "Pipeline", ShortPipeline)
    monkeypatch.setattr(precision, "PLAN_FILE", tmp_path / "none.toml")
    src = tmp_path / "in.wav"
    sf.write(src, read_wav(INPUTS / "speech.wav")[7000:7000 + samples], 16000)
    args = ["-m", cached_checkpoint("synth-v2-40k-f0"), "--hubert", cached_checkpoint("contentvec"), "--f0-method",
            f0_method] + (["--rmvpe", cached_checkpoint("rmvpe")] if f0_method == "rmvpe" else [])
    out = {}
    for dtype in dtypes:
        path = tmp_path / f"{dtype}.wav"
        assert main(["convert", str(src), *map(str, args), "-o", str(path), "--dtype", dtype]) == 0
        assert sf.info(path).subtype == "FLOAT"  # float32 output in every precision
        out[dtype], _ = sf.read(path, dtype="float64")
    return out


def test_convert_dtype_float16_writes_finite_float32_audio(tmp_path, monkeypatch):
    audio = _convert(tmp_path, monkeypatch, 800, 0.025, ["float16"], "fcpe")["float16"]
    assert audio.shape == (1200,) and np.isfinite(audio).all() and np.sqrt(np.mean(audio ** 2)) > 1e-3


@pytest.mark.slow  # ~15 s here
def test_convert_in_float16_is_close_to_float32(tmp_path, monkeypatch):
    out = _convert(tmp_path, monkeypatch, 1600, 0.05, ["float32", "float16"], "rmvpe")
    snr = 10 * np.log10(np.sum(out["float32"] ** 2) / np.sum((out["float16"] - out["float32"]) ** 2))
    assert snr > 40, snr  # 54 dB measured (0.5 s with the original padding: 42 dB)
