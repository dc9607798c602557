"""The RVC synthesizer on MLX and its public API; module paths equal the `.pth` weight keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rvc_common.config import SynthConfig
from rvc_common.inputs import SynthNoise, check_inputs
from rvc_common.instrument import tap
from rvc_mlx import precision
from rvc_mlx.fastmath import exp
from rvc_mlx.runtime import mx, nn
from rvc_mlx.synthesizer.flow import ResidualCouplingBlock
from rvc_mlx.synthesizer.nsf_hifigan import HiFiGANGenerator, HiFiGANNSFGenerator
from rvc_mlx.synthesizer.text_encoder import TextEncoder


class SynthesizerModel(nn.Module):
    """enc_p, flow, dec, emb_g; inference path of the original `Synthesizer.infer`; (B, T, C) throughout."""

    # Modules the original keeps in float32 in half mode (`precision`); the sine phase itself is functional
    # (SineGenerator: float32 from its f0 input on).
    FLOAT32 = {
        "dec.m_source": "NSF source: the sine phase is a cumulative sum over the segment; the original builds it "
                        "in float32 (its 1-channel mix costs nothing)",
    }

    def __init__(self, cfg: SynthConfig):
        super().__init__()
        self.cfg = cfg
        self.enc_p = TextEncoder(cfg)
        self.dec = HiFiGANNSFGenerator(cfg) if cfg.use_f0 else HiFiGANGenerator(cfg)
        self.flow = ResidualCouplingBlock(cfg)
        self.emb_g = nn.Embedding(cfg.spk_embed_dim, cfg.gin_channels)

    def __call__(self, phone, phone_lengths, pitch, nsff0, sid, eps_zp, eps_sine):
        g = self.emb_g(sid)[:, None, :]
        m_p, logs_p, x_mask = self.enc_p(phone, pitch, phone_lengths)
        z_p = tap("synth.z_p", (m_p + exp(logs_p) * eps_zp * self.cfg.prior_noise_scale) * x_mask, layout="NLC")
        z = self.flow(z_p, x_mask, g=g, reverse=True)
        if self.cfg.use_f0:
            return self.dec(z * x_mask, nsff0, g, eps_sine)
        return self.dec(z * x_mask, g)


class Synthesizer:
    """features (T, 768|256), pitch_coarse (T,), pitch_hz (T,), speaker id, noise -> audio (T * upp,)."""

    def __init__(self, model: SynthesizerModel):
        self.model = model
        self.model.eval()
        self.cfg = model.cfg

    @classmethod
    def from_checkpoint(cls, path: str | Path, dtype: str | None = None,
                        plan: precision.Plan | None = None) -> "Synthesizer":
        """An RVC `.pth` (converted once, cached) or a converted `.safetensors` (config in its metadata); `dtype`
        (float16, bfloat16) runs it with the committed plan for that dtype, `plan` with that one."""
        from rvc_mlx.checkpoints import convert_rvc_model, load_mlx_weights, read_mlx_metadata

        path = Path(path)
        converted = path if path.suffix == ".safetensors" else convert_rvc_model(path)
        meta = json.loads(read_mlx_metadata(converted, "synthesizer")["config"])
        cfg = SynthConfig.from_list(meta["config"], meta["f0"], meta["version"], meta["vocoder"], str(converted))
        model = SynthesizerModel(cfg)
        load_mlx_weights(model, converted, component="synthesizer")
        precision.configure(model, "synth", dtype, plan)
        return cls(model)

    def infer_mx(self, features, pitch_coarse=None, pitch_hz=None, speaker_id: int = 0,
                 noise: SynthNoise | None = None) -> mx.array:
        feats, coarse, hz, eps_zp, eps_sine = check_inputs(self.cfg, features, pitch_coarse, pitch_hz, speaker_id,
                                                           noise)
        t = feats.shape[0]
        eps_zp = mx.random.normal((1, t, self.cfg.inter_channels)) if eps_zp is None else \
            mx.array(eps_zp.transpose(0, 2, 1))
        pitch = nsff0 = sine = None
        if self.cfg.use_f0:
            pitch, nsff0 = mx.array(coarse)[None], mx.array(hz)[None]
            sine = mx.random.normal((1, t * self.cfg.upp, 1)) if eps_sine is None else mx.array(eps_sine)
        audio = self.model(mx.array(feats)[None], mx.array([t]), pitch, nsff0, mx.array([speaker_id]), eps_zp, sine)
        return tap("synth.audio", precision.as_float32(audio[0, :, 0]))  # float32 audio in every precision

    def infer(self, features, pitch_coarse=None, pitch_hz=None, speaker_id: int = 0,
              noise: SynthNoise | None = None) -> np.ndarray:
        out = self.infer_mx(features, pitch_coarse, pitch_hz, speaker_id, noise)
        mx.eval(out)
        return precision.host(out)
