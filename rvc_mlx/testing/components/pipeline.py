"""The end-to-end pipeline in the harness: speech through HuBERT (synthetic ContentVec), an f0 method, optional
synthetic faiss index and a synthesizer variant, MLX `rvc_mlx.pipeline` vs the twin `reference_torch.pipeline`.
Only the pipeline's own taps (`pipeline.*`) are compared; each model's layers have their own goldens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rvc_mlx.testing.components import CaseSpec, Component, ModelCache, SpecError, Weights
from rvc_mlx.testing.taps import LayoutMap, LayoutRule

# the synthetic index the pipeline cases retrieve from (v2: 768-d, v1: 256-d features)
INDEX_VECTORS = 2000


class _Models:
    """Everything one pipeline case needs, as paths (weights hashes in `info`)."""

    def __init__(self, synth: Path, hubert: Path, pitch: dict[str, Path], index: Path | None):
        self.synth, self.hubert, self.pitch, self.index = synth, hubert, pitch, index


class PipelineComponent(Component):
    name = "pipeline"
    root = "model"
    layouts = LayoutMap((LayoutRule("*", output="same"),))

    def __init__(self, spec):
        super().__init__(spec)
        self._paths: dict[str, _Models] = {}
        # the models inside the pipelines, shared by the cases' pipelines (they differ in the synthesizer only)
        self._parts = ModelCache(keep=8)

    def weights_key(self, case: CaseSpec | None) -> str:
        if case is None or not case.variant:
            raise SpecError("pipeline cases need a synthesizer `variant` in golden/cases.toml")
        return f"pipeline-{case.variant}-{case.f0_method}-{'index' if case.index else 'noindex'}"

    def weights(self, weights_dir: Path | None, case: CaseSpec | None = None) -> Weights:
        from rvc_common.config import synth_variants
        from rvc_mlx.checkpoints import file_sha256
        from rvc_mlx.pipeline import packaged_pitch_weights
        from rvc_mlx.testing import synthetic
        from rvc_mlx.testing.components import registry

        self.weights_key(case)
        comps = registry()
        synth = comps["synth"].weights(None, case)
        hubert = comps["hubert"].weights(None, None)
        pitch = {"rmvpe": comps["rmvpe"].weights(None, None).path, **packaged_pitch_weights()}
        index = None
        if case.index:
            from rvc_mlx.index import write_synthetic_index

            dim = synth_variants()[case.variant].text_enc_hidden_dim
            index = synthetic.cache_dir() / "synthetic" / f"index-{dim}d-{INDEX_VECTORS}-seed0.index"
            if not index.is_file():
                index.parent.mkdir(parents=True, exist_ok=True)
                write_synthetic_index(index, n_vectors=INDEX_VECTORS, dim=dim, seed=0)
        info = {"format": "pipeline: synthetic RVC .pth + ContentVec + f0 weights + faiss index",
                "variant": case.variant, "f0_method": case.f0_method, "synth_sha256": synth.info["sha256"],
                "hubert_sha256": hubert.info["sha256"],
                "index_sha256": file_sha256(index) if index is not None else None}
        info["sha256"] = "|".join(str(info[k]) for k in ("synth_sha256", "hubert_sha256", "index_sha256"))
        self._paths[info["sha256"]] = _Models(synth.path, hubert.path, pitch, index)
        return Weights(synth.path, info)

    def release(self) -> None:
        super().release()
        self._parts.clear()  # the weight paths (`_paths`) stay: the session's Weights name them

    def _models(self, weights: Weights) -> _Models:
        return self._paths[weights.info["sha256"]]

    def _part(self, key: tuple, load, path: Path) -> Any:
        """One model inside a pipeline, loaded once for every pipeline that holds it."""
        key = (*key, str(path))
        if key not in self._parts:
            self._parts[key] = load(path)
        return self._parts[key]

    def twin(self, weights: Weights, dtype) -> Any:
        key = (weights.info["sha256"], weights.info["f0_method"], str(dtype))
        if key not in self._twins:
            from reference_torch.crepe import CREPE
            from reference_torch.fcpe import FCPE
            from reference_torch.hubert import HuBERT
            from reference_torch.pipeline import Pipeline
            from reference_torch.rmvpe import RMVPE
            from reference_torch.synthesizer.model import Synthesizer

            m = self._models(weights)
            method = weights.info["f0_method"]
            load = {"rmvpe": lambda p: RMVPE.from_checkpoint(p, dtype=dtype),
                    "crepe": lambda p: CREPE.from_checkpoint(p, model="full", dtype=dtype),
                    "crepe-tiny": lambda p: CREPE.from_checkpoint(p, model="tiny", dtype=dtype),
                    "fcpe": lambda p: FCPE.from_checkpoint(p, dtype=dtype)}[method]
            hubert = self._part(("twin", str(dtype)), lambda p: HuBERT.from_checkpoint(p, dtype=dtype), m.hubert)
            synth = self._part(("twin", str(dtype)), lambda p: Synthesizer.from_checkpoint(p, dtype=dtype), m.synth)
            pitch = self._part(("twin", str(dtype), method), load, m.pitch[method])
            self._twins[key] = Pipeline(hubert, synth, {method: pitch}, m.index)
        return self._twins[key]

    def mlx(self, weights: Weights) -> Any:
        key = (weights.info["sha256"], weights.info["f0_method"])
        if key not in self._mlx:
            from rvc_mlx.hubert import HuBERT
            from rvc_mlx.index import FeatureIndex
            from rvc_mlx.pipeline import Pipeline, pitch_loaders
            from rvc_mlx.synthesizer.model import Synthesizer

            m = self._models(weights)
            loaders = pitch_loaders(rmvpe=m.pitch["rmvpe"], crepe_full=m.pitch.get("crepe"),
                                    crepe_tiny=m.pitch.get("crepe-tiny"), fcpe=m.pitch.get("fcpe"))
            shared = {method: (lambda method=method, load=load: self._part(("mlx", method), lambda _: load(),
                                                                           m.pitch[method]))
                      for method, load in loaders.items()}
            index = FeatureIndex.read(m.index) if m.index is not None else None
            self._mlx[key] = Pipeline(self._part(("mlx",), HuBERT.from_checkpoint, m.hubert),
                                      self._part(("mlx",), Synthesizer.from_checkpoint, m.synth), shared, index)
        return self._mlx[key]

    def build_mlx(self, weights: Weights, case: CaseSpec, plans: dict[str, Any]) -> Any:
        """A fresh pipeline whose models each carry their own precision plan (`plans` by model: hubert, the f0
        method, synth)."""
        from rvc_mlx import precision
        from rvc_mlx.hubert import HuBERT
        from rvc_mlx.index import FeatureIndex
        from rvc_mlx.pipeline import Pipeline, pitch_loaders
        from rvc_mlx.synthesizer.model import Synthesizer

        def planned(key: str, predictor: Any) -> Any:
            precision.apply(predictor.model, plans.get(key, precision.Plan()))
            return predictor

        m = self._models(weights)
        method = weights.info["f0_method"]
        load = pitch_loaders(rmvpe=m.pitch["rmvpe"], crepe_full=m.pitch.get("crepe"),
                             crepe_tiny=m.pitch.get("crepe-tiny"), fcpe=m.pitch.get("fcpe"))[method]
        pitch = planned(method, load())
        return Pipeline(planned("hubert", HuBERT.from_checkpoint(m.hubert)),
                        planned("synth", Synthesizer.from_checkpoint(m.synth)), {method: lambda: pitch},
                        FeatureIndex.read(m.index) if m.index is not None else None)

    def twin_module(self, twin: Any) -> Any:
        import torch

        return torch.nn.Module()  # only the pipeline's extra taps are recorded

    def mlx_module(self, model: Any) -> Any:
        from rvc_mlx.runtime import nn

        return nn.Module()

    def load_input(self, case: CaseSpec) -> tuple[dict, dict[str, Any]]:
        """The pipeline takes any rate and channel count, as a user's file: (N,) or (N, channels) float32 + rate."""
        import hashlib

        from rvc_mlx.testing.components import GOLDEN
        from rvc_mlx.testing.signals import read_audio

        path = GOLDEN / "inputs" / case.input
        if not path.is_file():
            raise SpecError(f"golden/inputs/{case.input} is missing (case {self.name}/{case.name}); "
                            "restore it with `git checkout golden/inputs`")
        audio, sr = read_audio(path)
        clip = audio[case.start:None if case.samples is None else case.start + case.samples]
        options = {"f0_method": case.f0_method, "index_rate": 0.75 if case.index else 0.0, "protect": 0.33,
                   "seed": case.seed}
        if case.rms_mix != 1:  # recorded only where it applies: older manifests have none
            options["rms_mix"] = case.rms_mix
        info = {"file": f"inputs/{case.input}", "sha256": hashlib.sha256(audio.tobytes()).hexdigest(),
                "start": case.start, "samples": int(clip.shape[0]), "options": options}
        if sr != 16000 or clip.ndim != 1:  # recorded only where they differ: older manifests have neither
            info.update(sample_rate=sr, channels=1 if clip.ndim == 1 else int(clip.shape[1]))
        return {"audio": clip, "sr": sr, **options}, info

    def run_twin(self, twin: Any, inputs: dict) -> Any:
        opts = dict(inputs)
        if "rms_mix" in opts:  # the original's name
            opts["volume_envelope"] = opts.pop("rms_mix")
        return twin.convert(opts.pop("audio"), opts.pop("sr"), **opts)

    def run_mlx(self, model: Any, inputs: dict) -> Any:
        from rvc_mlx.pipeline import ConvertOptions

        opts = dict(inputs)
        return model.convert(opts.pop("audio"), opts.pop("sr"), ConvertOptions(**opts))[0]

    def extra_metrics(self, ref, values: dict) -> dict:
        """Audio metrics of the final output (SNR, SI-SDR, multi-resolution STFT, log-spectral distance)."""
        if "pipeline.audio" not in ref.taps or "pipeline.audio" not in values:
            return {}
        from rvc_common.config import synth_variants
        from rvc_mlx.testing.audio_metrics import audio_metrics

        sr = synth_variants()[ref.weights["variant"]].sr
        return {"audio": audio_metrics(values["pipeline.audio"].astype(np.float64),
                                       ref.value("pipeline.audio").astype(np.float64), sr)}
