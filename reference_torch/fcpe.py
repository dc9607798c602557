"""PyTorch twin of FCPE as RVC runs it (torchfcpe 0.0.4: Wav2MelModule + CFNaiveMelPE conv-only + local_argmax).

Same modules, same state-dict keys as `fcpe_c_v001.pt`'s "model", same maths. Tensor layout is PyTorch's: mel
(B, T, 128); input stack and conv module interiors (B, C, T); encoder layers (B, T, 512); latent (B, T, 360).
`dtype=torch.float64` gives the float64 oracle the parity harness measures both float32 runs against.
"""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import torch
import torch.nn as nn

from rvc_common.audio import check_mono
from rvc_common.config import FCPE_CFG, FCPEConfig
from rvc_common.instrument import tap


class Transpose(nn.Module):
    """Swaps two axes: (B, T, C) <-> (B, C, T) around the conv module's Conv1d layers."""

    def __init__(self, dims: tuple[int, int]):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.transpose(*self.dims)


class DepthWiseConv1d(nn.Module):
    """Per-channel Conv1d with "same" padding; (B, C, T)."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)

    def forward(self, x):
        return self.conv(x)


class ConformerConvModule(nn.Module):
    """LayerNorm -> 1x1 conv -> GLU -> depthwise conv -> SiLU -> 1x1 conv; (B, T, C) -> (B, T, C)."""

    def __init__(self, cfg: FCPEConfig):
        super().__init__()
        inner = cfg.hidden * cfg.expansion
        self.net = nn.Sequential(
            nn.LayerNorm(cfg.hidden),
            Transpose((1, 2)),
            nn.Conv1d(cfg.hidden, 2 * inner, 1),
            nn.GLU(dim=1),
            DepthWiseConv1d(inner, cfg.kernel_size),
            nn.SiLU(),
            nn.Conv1d(inner, cfg.hidden, 1),
            Transpose((1, 2)),
            nn.Dropout(0.0),  # kept so indices match the checkpoint; RVC's bundled model runs with p = 0
        )

    def forward(self, x):
        return self.net(x)


class CFNEncoderLayer(nn.Module):
    """x + ConformerConvModule(x); `norm` would feed the attention branch, which conv_only leaves out; (B, T, C)."""

    def __init__(self, cfg: FCPEConfig):
        super().__init__()
        self.conformer = ConformerConvModule(cfg)
        self.norm = nn.LayerNorm(cfg.hidden)  # in the checkpoint, unused in forward

    def forward(self, x):
        return x + self.conformer(x)


class ConformerNaiveEncoder(nn.Module):
    """Stack of conv-only encoder layers; (B, T, C)."""

    def __init__(self, cfg: FCPEConfig):
        super().__init__()
        self.encoder_layers = nn.ModuleList([CFNEncoderLayer(cfg) for _ in range(cfg.n_layers)])

    def forward(self, x):
        for layer in self.encoder_layers:
            x = layer(x)
        return x


class WeightNormLinear(nn.Module):
    """Linear layer stored as legacy weight norm (weight_g (O, 1), weight_v (O, I)); (..., I) -> (..., O)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        self.weight_v = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x):
        # torch's fused kernel, as torch.nn.utils weight_norm uses: an explicit g * v / ||v|| differs by 1 ulp in
        # some weights, which would cost bit-exactness with the package.
        weight = torch._weight_norm(self.weight_v, self.weight_g, 0)
        return nn.functional.linear(x, weight, self.bias)


class CFNaiveMelPE(nn.Module):
    """mel (B, T, 128) -> latent (B, T, 360) = sigmoid(pitch-bin logits)."""

    def __init__(self, cfg: FCPEConfig = FCPE_CFG):
        super().__init__()
        self.input_stack = nn.Sequential(
            nn.Conv1d(cfg.n_mels, cfg.hidden, 3, padding=1),
            nn.GroupNorm(cfg.groups, cfg.hidden),
            nn.LeakyReLU(0.01),
            nn.Conv1d(cfg.hidden, cfg.hidden, 3, padding=1),
        )
        self.net = ConformerNaiveEncoder(cfg)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.output_proj = WeightNormLinear(cfg.hidden, cfg.n_class)
        # Both buffers are in the checkpoint: the bin -> cents map (float32 torch.linspace from 32.7 to 1975.5 Hz)
        # and the training target's upper cents limit (unused at inference).
        self.register_buffer("cent_table", torch.zeros(cfg.n_class))
        self.register_buffer("gaussian_blurred_cent_mask", torch.zeros(()))

    def forward(self, mel):
        x = self.input_stack(mel.transpose(1, 2)).transpose(1, 2)
        x = self.norm(self.net(x))
        return torch.sigmoid(self.output_proj(x))


class MelSpectrogram(nn.Module):
    """Wav2MelModule: log-mel of |STFT| (periodic Hann, (win-hop)/2 padding each side, center=False), frame count
    fitted to N//hop + 1; audio (B, N) -> (B, T, 128)."""

    def __init__(self, cfg: FCPEConfig = FCPE_CFG):
        super().__init__()
        # librosa's float32 filter values, as the original keeps them; cast (exactly) to the run's dtype.
        basis = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.mel_fmin,
                                    fmax=cfg.mel_fmax, htk=cfg.mel_htk).astype(np.float32)
        self.register_buffer("mel_basis", torch.tensor(basis), persistent=False)
        self.cfg = cfg

    def forward(self, audio):
        cfg = self.cfg
        n = audio.shape[-1]
        # The original reflects only when the input is longer than the pad (torch's reflect needs pad < N) and
        # zero-pads otherwise; it widens the right pad for N < hop, which min_samples rules out.
        mode = "reflect" if n > cfg.pad else "constant"
        x = nn.functional.pad(audio.unsqueeze(1), (cfg.pad, cfg.pad), mode=mode).squeeze(1)
        window = torch.hann_window(cfg.win_length, dtype=audio.dtype)  # computed in the run's dtype
        spec = torch.stft(x, cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length, window=window,
                          center=False, return_complex=True)
        magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + cfg.magnitude_eps)
        mel = torch.log(torch.clamp(torch.matmul(self.mel_basis.to(audio.dtype), magnitude), min=cfg.mel_clamp))
        mel = mel.transpose(-1, -2)
        # STFT gives N//hop frames; the original repeats the last one to reach N//hop + 1.
        target = cfg.n_frames(n)
        if mel.shape[1] < target:
            mel = torch.cat([mel] + [mel[:, -1:]] * (target - mel.shape[1]), dim=1)
        return mel[:, :target]


def local_argmax_f0(latent: torch.Tensor, cent_table: torch.Tensor, threshold: float,
                    cfg: FCPEConfig = FCPE_CFG) -> torch.Tensor:
    """Original decode: salience-weighted mean of cents over argmax +- 4 bins clamped into range -> Hz;
    0 where max <= threshold. latent (T, 360) -> (T,)."""
    r, n = cfg.decode_radius, latent.shape[-1]
    confidence, center = torch.max(latent, dim=-1, keepdim=True)
    idx = torch.clamp(center + torch.arange(-r, r + 1), 0, n - 1)  # clamped: edge bins repeat, no zero padding
    window = torch.gather(latent, -1, idx)
    cents = torch.sum(cent_table[idx] * window, dim=-1) / torch.sum(window, dim=-1)
    # The original scales cents by -inf on unvoiced frames so that 2**(-inf) = 0; a select gives the same 0
    # without NaN when a frame's window sums to 0.
    return torch.where(confidence[:, 0] > threshold, 10.0 * 2 ** (cents / 1200.0), 0.0)


class FCPE:
    """FCPE twin: audio (N,) at 16 kHz -> mel (1, T, 128), latent (T, 360), f0 (T,) in Hz (0 = unvoiced)."""

    def __init__(self, model: CFNaiveMelPE, dtype: torch.dtype = torch.float32, cfg: FCPEConfig = FCPE_CFG):
        self.model = model.to(dtype).eval()
        self.mel_extractor = MelSpectrogram(cfg)
        self.dtype = dtype
        self.cfg = cfg

    @classmethod
    def from_checkpoint(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> "FCPE":
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
            raise ValueError(f"{path}: not a torchfcpe checkpoint (expected a dict with 'model' and 'config_dict')")
        # the original builds its mel front end from config_dict; this twin implements FCPE_CFG's only
        cfg = FCPE_CFG
        want = {"sr": cfg.sample_rate, "num_mels": cfg.n_mels, "n_fft": cfg.n_fft, "win_size": cfg.win_length,
                "hop_size": cfg.hop_length, "fmin": cfg.mel_fmin, "fmax": cfg.mel_fmax}
        mel = (raw.get("config_dict") or {}).get("mel") or {}
        for key, value in want.items():
            if mel.get(key) != value:
                raise ValueError(f"{path}: FCPE config mel.{key} is {mel.get(key)!r}; the twin implements {value!r}")
        model = CFNaiveMelPE()
        model.load_state_dict(raw["model"], strict=True)
        return cls(model, dtype)

    @torch.no_grad()
    def mel(self, audio_16k: np.ndarray) -> torch.Tensor:
        audio = check_mono(audio_16k, self.cfg.min_samples, "FCPE", self.cfg.sample_rate)
        audio = torch.from_numpy(audio).to(self.dtype).unsqueeze(0)
        return tap("fcpe.mel", self.mel_extractor(audio))

    @torch.no_grad()
    def _latent(self, audio_16k: np.ndarray) -> torch.Tensor:
        return tap("fcpe.latent", self.model(self.mel(audio_16k))[0])

    def latent(self, audio_16k: np.ndarray) -> np.ndarray:
        return self._latent(audio_16k).cpu().numpy()

    @torch.no_grad()
    def f0(self, audio_16k: np.ndarray, threshold: float | None = None) -> np.ndarray:
        thr = self.cfg.threshold if threshold is None else threshold
        f0 = local_argmax_f0(self._latent(audio_16k), self.model.cent_table, thr, self.cfg)
        return tap("fcpe.f0", f0).cpu().numpy()
