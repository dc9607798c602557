"""The RVC synthesizer twin (rvc/lib/algorithm/synthesizers.py, inference path) and `.pth` loading.

Noise is an input: `eps_zp` (B, 192, T) standard normal for the flow prior (scaled by 0.66666 inside, as the
original) and `eps_sine` (B, T*upp, 1) standard normal for the NSF source; without them each call draws its own
from torch's RNG (then results are not comparable with MLX).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from reference_torch.synthesizer.flow import ResidualCouplingBlock
from reference_torch.synthesizer.nsf_hifigan import HiFiGANGenerator, HiFiGANNSFGenerator
from reference_torch.synthesizer.text_encoder import TextEncoder
from rvc_common.config import SynthConfig
from rvc_common.inputs import check_inputs
from rvc_common.instrument import tap


class SynthesizerModel(nn.Module):
    """enc_p, flow, dec, emb_g with the checkpoint's key paths (no enc_q: it is not in inference checkpoints)."""

    def __init__(self, cfg: SynthConfig):
        super().__init__()
        self.cfg = cfg
        self.enc_p = TextEncoder(cfg)
        self.dec = HiFiGANNSFGenerator(cfg) if cfg.use_f0 else HiFiGANGenerator(cfg)
        self.flow = ResidualCouplingBlock(cfg)
        self.emb_g = nn.Embedding(cfg.spk_embed_dim, cfg.gin_channels)

    def forward(self, phone, phone_lengths, pitch, nsff0, sid, eps_zp, eps_sine):
        g = self.emb_g(sid).unsqueeze(-1)
        m_p, logs_p, x_mask = self.enc_p(phone, pitch, phone_lengths)
        z_p = tap("synth.z_p", (m_p + torch.exp(logs_p) * eps_zp * self.cfg.prior_noise_scale) * x_mask)
        z = self.flow(z_p, x_mask, g=g, reverse=True)
        if self.cfg.use_f0:
            return self.dec(z * x_mask, nsff0, g, eps_sine)
        return self.dec(z * x_mask, g)


class Synthesizer:
    """Twin API: features (T, 768|256), pitch_coarse (T,), pitch_hz (T,), speaker id -> audio (T * upp,)."""

    def __init__(self, model: SynthesizerModel, dtype: torch.dtype = torch.float32):
        self.model = model.to(dtype).eval()
        self.cfg = model.cfg
        self.dtype = dtype

    @classmethod
    def from_checkpoint(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> "Synthesizer":
        # as the original reads it (torch.load, weights_only); enc_q is the training-only posterior encoder
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
        config = list(ckpt["config"])
        config[-3] = ckpt["weight"]["emb_g.weight"].shape[0]  # the original takes spk_embed_dim from the weights
        cfg = SynthConfig.from_list(config, use_f0=bool(int(ckpt.get("f0", 1))),
                                    version=str(ckpt.get("version", "v1")),
                                    vocoder=str(ckpt.get("vocoder", "HiFi-GAN")), source=str(path))
        model = SynthesizerModel(cfg)
        model.load_state_dict({k: v for k, v in ckpt["weight"].items() if not k.startswith("enc_q.")}, strict=True)
        return cls(model, dtype)

    @torch.no_grad()
    def infer(self, features, pitch_coarse=None, pitch_hz=None, speaker_id: int = 0, noise=None) -> np.ndarray:
        feats, coarse, hz, eps_zp, eps_sine = check_inputs(self.cfg, features, pitch_coarse, pitch_hz, speaker_id,
                                                           noise)
        t = feats.shape[0]
        dt = self.dtype
        phone = torch.from_numpy(feats).to(dt)[None]
        lengths = torch.tensor([t])
        sid = torch.tensor([speaker_id])
        eps_zp = torch.randn(1, self.cfg.inter_channels, t, dtype=dt) if eps_zp is None else \
            torch.from_numpy(eps_zp).to(dt)
        pitch = nsff0 = sine = None
        if self.cfg.use_f0:
            pitch = torch.from_numpy(coarse)[None]
            nsff0 = torch.from_numpy(hz).to(dt)[None]
            sine = torch.randn(1, t * self.cfg.upp, 1, dtype=dt) if eps_sine is None else \
                torch.from_numpy(eps_sine).to(dt)
        audio = self.model(phone, lengths, pitch, nsff0, sid, eps_zp, sine)
        return tap("synth.audio", audio[0, 0]).cpu().numpy()
