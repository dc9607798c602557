"""The end-to-end pipeline in the harness: speech through HuBERT (synthetic ContentVec), an f0 method, optional
synthetic faiss index and a synthesizer variant, MLX `rvc_mlx.pipeline` vs the twin `reference_torch.pipeline`.
Only the pipeline's own taps (`pipeline.*`) are compared; each model's layers have their own goldens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rvc_mlx.testing.components import CaseSpec, Component, SpecError, Weights
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

    def weights_key(self, case: CaseSpec | None) -> str:
        if case is None or not case.variant:
            raise SpecError("pipeline cases need a synthesizer `variant` in golden/cases.toml")
        return f"pipeline-{case.variant}-{case.f0_method}-{'index' if case.index else 'noindex'}"

    def weights(self, weights_dir: Path | None, case: CaseSpec | None = None) -> Weights:
        from rvc_mlx.checkpoints import file_sha256
        from rvc_mlx.config import synth_variants
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

    def _models(self, weights: Weights) -> _Models:
        return self._paths[weights.info["sha256"]]

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
            self._twins[key] = Pipeline(HuBERT.from_checkpoint(m.hubert, dtype=dtype),
                                        Synthesizer.from_checkpoint(m.synth, dtype=dtype),
                                        {method: load(m.pitch[method])}, m.index)
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
            index = FeatureIndex.read(m.index) if m.index is not None else None
            self._mlx[key] = Pipeline(HuBERT.from_checkpoint(m.hubert), Synthesizer.from_checkpoint(m.synth),
                                      loaders, index)
        return self._mlx[key]

    def twin_module(self, twin: Any) -> Any:
        import torch

        return torch.nn.Module()  # only the pipeline's extra taps are recorded

    def mlx_module(self, model: Any) -> Any:
        import mlx.nn as nn

        return nn.Module()

    def load_input(self, case: CaseSpec) -> tuple[dict, dict[str, Any]]:
        audio, info = super().load_input(case)
        options = {"f0_method": case.f0_method, "index_rate": 0.75 if case.index else 0.0, "protect": 0.33,
                   "seed": case.seed}
        return {"audio": audio, **options}, {**info, "options": options}

    def run_twin(self, twin: Any, inputs: dict) -> Any:
        opts = dict(inputs)
        return twin.convert(opts.pop("audio"), 16000, **opts)

    def run_mlx(self, model: Any, inputs: dict) -> Any:
        from rvc_mlx.pipeline import ConvertOptions

        opts = dict(inputs)
        return model.convert(opts.pop("audio"), 16000, ConvertOptions(**opts))[0]

    def extra_metrics(self, ref, values: dict) -> dict:
        """Audio metrics of the final output (SNR, SI-SDR, multi-resolution STFT, log-spectral distance)."""
        if "pipeline.audio" not in ref.taps or "pipeline.audio" not in values:
            return {}
        from rvc_mlx.config import synth_variants
        from rvc_mlx.testing.audio_metrics import audio_metrics

        sr = synth_variants()[ref.weights["variant"]].sr
        return {"audio": audio_metrics(values["pipeline.audio"].astype(np.float64),
                                       ref.value("pipeline.audio").astype(np.float64), sr)}
