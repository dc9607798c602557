"""PyTorch twin of RVC's RMVPE (rvc/lib/predictors/RMVPE.py): same modules, same state-dict keys, same maths.

Tensor layout is PyTorch's: mel (B, 128, T), U-Net activations NCHW (B, C, T, 128), salience (B, T, 360).
`dtype=torch.float64` gives the float64 oracle the parity harness measures both float32 runs against.
"""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rvc_common.audio import check_mono
from rvc_common.config import RMVPE as CFG, RMVPEConfig
from rvc_common.instrument import tap


class ConvBlockRes(nn.Module):
    """Two 3x3 conv-BN-ReLU with a residual (1x1 conv shortcut when channels change); NCHW."""

    def __init__(self, in_channels: int, out_channels: int, momentum: float = 0.01):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, (3, 3), (1, 1), (1, 1), bias=False),
            nn.BatchNorm2d(out_channels, momentum=momentum),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, (3, 3), (1, 1), (1, 1), bias=False),
            nn.BatchNorm2d(out_channels, momentum=momentum),
            nn.ReLU(),
        )
        self.is_shortcut = in_channels != out_channels
        if self.is_shortcut:
            self.shortcut = nn.Conv2d(in_channels, out_channels, (1, 1))

    def forward(self, x):
        return self.conv(x) + (self.shortcut(x) if self.is_shortcut else x)


class ResEncoderBlock(nn.Module):
    """n_blocks ConvBlockRes then an optional AvgPool2d; returns (pre-pool, pooled) when pooling; NCHW."""

    def __init__(self, in_channels, out_channels, kernel_size, n_blocks=1, momentum=0.01):
        super().__init__()
        self.n_blocks = n_blocks
        self.conv = nn.ModuleList([ConvBlockRes(in_channels, out_channels, momentum)])
        for _ in range(n_blocks - 1):
            self.conv.append(ConvBlockRes(out_channels, out_channels, momentum))
        self.kernel_size = kernel_size
        if kernel_size is not None:
            self.pool = nn.AvgPool2d(kernel_size=kernel_size)

    def forward(self, x):
        for i in range(self.n_blocks):
            x = self.conv[i](x)
        if self.kernel_size is not None:
            return x, self.pool(x)
        return x


class Encoder(nn.Module):
    """Input BatchNorm then the pooling encoder stages; returns (x, skip tensors); NCHW."""

    def __init__(self, in_channels, in_size, n_encoders, kernel_size, n_blocks, out_channels=16, momentum=0.01):
        super().__init__()
        self.n_encoders = n_encoders
        self.bn = nn.BatchNorm2d(in_channels, momentum=momentum)
        self.layers = nn.ModuleList()
        for _ in range(n_encoders):
            self.layers.append(ResEncoderBlock(in_channels, out_channels, kernel_size, n_blocks, momentum))
            in_channels, out_channels, in_size = out_channels, out_channels * 2, in_size // 2
        self.out_channel = out_channels

    def forward(self, x):
        concat_tensors = []
        x = self.bn(x)
        for layer in self.layers:
            t, x = layer(x)
            concat_tensors.append(t)
        return x, concat_tensors


class Intermediate(nn.Module):
    """Non-pooling ResEncoderBlocks between encoder and decoder; NCHW."""

    def __init__(self, in_channels, out_channels, n_inters, n_blocks, momentum=0.01):
        super().__init__()
        self.layers = nn.ModuleList([ResEncoderBlock(in_channels, out_channels, None, n_blocks, momentum)])
        for _ in range(n_inters - 1):
            self.layers.append(ResEncoderBlock(out_channels, out_channels, None, n_blocks, momentum))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class ResDecoderBlock(nn.Module):
    """ConvTranspose2d-BN-ReLU upsampling, concat with the skip, n_blocks ConvBlockRes; NCHW."""

    def __init__(self, in_channels, out_channels, stride, n_blocks=1, momentum=0.01):
        super().__init__()
        out_padding = (0, 1) if tuple(stride) == (1, 2) else (1, 1)
        self.n_blocks = n_blocks
        self.conv1 = nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, (3, 3), stride, (1, 1), out_padding, bias=False),
            nn.BatchNorm2d(out_channels, momentum=momentum),
            nn.ReLU(),
        )
        self.conv2 = nn.ModuleList([ConvBlockRes(out_channels * 2, out_channels, momentum)])
        for _ in range(n_blocks - 1):
            self.conv2.append(ConvBlockRes(out_channels, out_channels, momentum))

    def forward(self, x, concat_tensor):
        x = torch.cat((self.conv1(x), concat_tensor), dim=1)
        for i in range(self.n_blocks):
            x = self.conv2[i](x)
        return x


class Decoder(nn.Module):
    """Decoder stages consuming the encoder skips in reverse order; NCHW."""

    def __init__(self, in_channels, n_decoders, stride, n_blocks, momentum=0.01):
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(n_decoders):
            out_channels = in_channels // 2
            self.layers.append(ResDecoderBlock(in_channels, out_channels, stride, n_blocks, momentum))
            in_channels = out_channels

    def forward(self, x, concat_tensors):
        for i, layer in enumerate(self.layers):
            x = layer(x, concat_tensors[-1 - i])
        return x


class DeepUnet(nn.Module):
    """Encoder -> Intermediate -> Decoder; (B, 1, T, 128) -> (B, 16, T, 128)."""

    def __init__(self, kernel_size, n_blocks, en_de_layers=5, inter_layers=4, in_channels=1, en_out_channels=16):
        super().__init__()
        self.encoder = Encoder(in_channels, 128, en_de_layers, kernel_size, n_blocks, en_out_channels)
        self.intermediate = Intermediate(
            self.encoder.out_channel // 2, self.encoder.out_channel, inter_layers, n_blocks
        )
        self.decoder = Decoder(self.encoder.out_channel, en_de_layers, kernel_size, n_blocks)

    def forward(self, x):
        x, concat_tensors = self.encoder(x)
        return self.decoder(self.intermediate(x), concat_tensors)


class BiGRU(nn.Module):
    """Bidirectional batch-first GRU returning only the output sequence; (B, T, F) -> (B, T, 2H)."""

    def __init__(self, input_features, hidden_features, num_layers):
        super().__init__()
        self.gru = nn.GRU(input_features, hidden_features, num_layers=num_layers, batch_first=True,
                          bidirectional=True)

    def forward(self, x):
        return self.gru(x)[0]


class E2E(nn.Module):
    """mel (B, 128, T) -> salience (B, T, 360); T must be a multiple of 32."""

    def __init__(self, cfg: RMVPEConfig = CFG):
        super().__init__()
        self.unet = DeepUnet(cfg.pool, cfg.n_blocks, cfg.en_de_layers, cfg.inter_layers, cfg.in_channels,
                             cfg.en_out_channels)
        self.cnn = nn.Conv2d(cfg.en_out_channels, 3, (3, 3), padding=(1, 1))
        self.fc = nn.Sequential(
            BiGRU(3 * cfg.n_mels, cfg.gru_hidden, cfg.n_gru),
            nn.Linear(2 * cfg.gru_hidden, cfg.n_class),
            nn.Dropout(0.25),
            nn.Sigmoid(),
        )

    def forward(self, mel):
        mel = mel.transpose(-1, -2).unsqueeze(1)
        x = self.cnn(self.unet(mel)).transpose(1, 2).flatten(-2)
        return self.fc(x)


class MelSpectrogram(nn.Module):
    """log-mel of |STFT| (periodic Hann, centre reflect padding); audio (B, N) -> (B, 128, N//160 + 1)."""

    def __init__(self, cfg: RMVPEConfig = CFG):
        super().__init__()
        # librosa's filters, as the original builds them (float32 values)
        basis = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.mel_fmin,
                                    fmax=cfg.mel_fmax, htk=True).astype(np.float32)
        self.register_buffer("mel_basis", torch.tensor(basis), persistent=False)
        self.cfg = cfg

    def forward(self, audio):
        cfg = self.cfg
        window = torch.hann_window(cfg.win_length, dtype=audio.dtype)
        fft = torch.stft(audio, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
                         window=window, center=True, return_complex=True)
        magnitude = torch.sqrt(fft.real.pow(2) + fft.imag.pow(2))
        mel = torch.matmul(self.mel_basis.to(audio.dtype), magnitude)
        return torch.log(torch.clamp(mel, min=cfg.mel_clamp))


def local_average_cents(salience: np.ndarray, threshold: float, cfg: RMVPEConfig = CFG) -> np.ndarray:
    """Original decode: salience-weighted mean of cents over argmax +- 4 bins; 0 where max <= threshold."""
    r = cfg.decode_radius
    cents_mapping = np.pad(cfg.cents_per_bin * np.arange(cfg.n_class) + cfg.cents_offset, (r, r))
    center = np.argmax(salience, axis=1) + r
    padded = np.pad(salience, ((0, 0), (r, r)))
    idx = center[:, None] + np.arange(-r, r + 1)[None, :]
    window = np.take_along_axis(padded, idx, axis=1)
    cents = np.sum(window * cents_mapping[idx], axis=1) / np.sum(window, axis=1)
    cents[np.max(padded, axis=1) <= threshold] = 0
    return cents


class RMVPE:
    """RMVPE0Predictor twin: audio (N,) at 16 kHz -> salience (T, 360) and f0 (T,) in Hz (0 = unvoiced)."""

    def __init__(self, model: E2E, dtype: torch.dtype = torch.float32, cfg: RMVPEConfig = CFG):
        self.model = model.to(dtype).eval()
        self.mel_extractor = MelSpectrogram(cfg)
        self.dtype = dtype
        self.cfg = cfg

    @classmethod
    def from_checkpoint(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> "RMVPE":
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        model = E2E()
        model.load_state_dict(state, strict=True)
        return cls(model, dtype)

    @torch.no_grad()
    def mel2hidden(self, mel: torch.Tensor, chunk_frames: int | None = None) -> torch.Tensor:
        chunk = chunk_frames or self.cfg.chunk_frames
        m = self.cfg.frame_multiple
        n_frames = mel.shape[-1]
        mel = F.pad(mel, (0, m * ((n_frames - 1) // m + 1) - n_frames), mode="reflect")
        chunks = [self.model(mel[..., s:s + chunk]) for s in range(0, mel.shape[-1], chunk)]
        return torch.cat(chunks, dim=1)[:, :n_frames]

    @torch.no_grad()
    def salience(self, audio_16k: np.ndarray, chunk_frames: int | None = None) -> np.ndarray:
        audio = check_mono(audio_16k, self.cfg.min_samples, "RMVPE", self.cfg.sample_rate)
        audio = torch.from_numpy(audio).to(self.dtype).unsqueeze(0)
        mel = tap("rmvpe.mel", self.mel_extractor(audio))
        hidden = tap("rmvpe.salience", self.mel2hidden(mel, chunk_frames)[0])
        return hidden.cpu().numpy()

    def f0(self, audio_16k: np.ndarray, threshold: float | None = None,
           chunk_frames: int | None = None) -> np.ndarray:
        thr = self.cfg.threshold if threshold is None else threshold
        cents = local_average_cents(self.salience(audio_16k, chunk_frames), thr, self.cfg)
        f0 = 10 * (2 ** (cents / 1200))
        f0[f0 == 10] = 0
        return tap("rmvpe.f0", f0)
