"""Model hyper-parameters: the one source of truth, imported by the MLX port and the PyTorch twin."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RMVPEConfig:
    """RMVPE as built by the original (`E2E(4, 1, (2, 2))` + its mel front end and decoder)."""

    n_blocks: int = 4  # ConvBlockRes per encoder / intermediate / decoder stage
    n_gru: int = 1
    pool: tuple[int, int] = (2, 2)  # AvgPool2d kernel and ConvTranspose2d stride
    en_de_layers: int = 5
    inter_layers: int = 4
    in_channels: int = 1
    en_out_channels: int = 16
    gru_hidden: int = 256
    n_mels: int = 128
    n_class: int = 360
    bn_eps: float = 1e-5
    # mel front end (RMVPE0Predictor: MelSpectrogram(128, 16000, 1024, 160, None, 30, 8000))
    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 160
    mel_fmin: float = 30.0
    mel_fmax: float = 8000.0
    mel_clamp: float = 1e-5
    # mel2hidden / decode
    frame_multiple: int = 32  # 5 poolings of 2 in time
    chunk_frames: int = 32000
    cents_offset: float = 1997.3794084376191
    cents_per_bin: float = 20.0
    decode_radius: int = 4  # weighted mean over argmax +- 4 bins
    threshold: float = 0.03  # RVC's pipeline threshold (`thred`)

    @property
    def min_samples(self) -> int:
        """Shortest input the original accepts: mel frames T must satisfy 32*ceil(T/32) - T < T (reflect pad)."""
        m = self.frame_multiple
        min_frames = next(t for t in range(1, 10 * m) if (m * ((t - 1) // m + 1) - t) < t)
        return (min_frames - 1) * self.hop_length


RMVPE = RMVPEConfig()
