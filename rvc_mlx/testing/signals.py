"""Test inputs: the committed WAVs under golden/inputs and the generators that made them.

    python -m rvc_mlx.testing.signals golden/inputs     # speech.wav (needs espeak-ng), harmonic.*, silence_noise.wav,
                                                        # speech_44k_stereo.wav (from speech.wav)

`harmonic.wav` is a synthetic voice-like signal with a known F0 contour (ground truth in `harmonic_f0.csv`,
one row per frame centre, every 160 samples, 0 = unvoiced); a test checks the committed files equal the
generator's output.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SR = 16000
HOP = 160
SPEECH_TEXT = "Hello, voice conversion."
SPEECH_CMD = ["espeak-ng", "-v", "en-us", "-s", "140", "-p", "50"]

# harmonic.wav: silence, a voiced glide with vibrato, silence
HARMONIC_SECONDS = 1.0
VOICED = (0.1, 0.9)  # seconds
F0_START, F0_END = 150.0, 280.0
VIBRATO_HZ, VIBRATO_CENTS = 5.0, 40.0


def harmonic_f0(t: np.ndarray) -> np.ndarray:
    """The ground-truth F0 (Hz) at times `t` (s); 0 outside the voiced span."""
    a, b = VOICED
    u = np.clip((t - a) / (b - a), 0.0, 1.0)
    f0 = F0_START * (F0_END / F0_START) ** u * 2 ** (VIBRATO_CENTS / 1200 * np.sin(2 * np.pi * VIBRATO_HZ * t))
    return np.where((t >= a) & (t < b), f0, 0.0)


def harmonic_signal(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(audio float32 at 16 kHz, truth (frames, 2) = [time s, f0 Hz]) for the known-F0 input."""
    rng = np.random.Generator(np.random.PCG64(seed))
    n = int(HARMONIC_SECONDS * SR)
    t = np.arange(n) / SR
    f0 = harmonic_f0(t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = np.zeros(n)
    for k in range(1, 40):
        amp = (1.0 / k) * (f0 * k < 0.45 * SR)  # band-limited harmonics, 1/k spectrum
        x += amp * np.sin(k * phase)
    a, b = VOICED
    env = np.clip(np.minimum(t - a, b - t) / 0.01, 0.0, 1.0)  # 160-sample fades keep onsets click-free
    x = 0.5 * x * env / np.max(np.abs(x * env)) + 1e-3 * rng.standard_normal(n)
    times = np.arange(n // HOP + 1) * HOP / SR  # frame i is centred on sample i * hop (centre=True)
    return x.astype(np.float32), np.stack([times, harmonic_f0(times)], axis=1)


def silence_noise_signal(seed: int = 1) -> np.ndarray:
    """4000 samples of digital silence, then 4000 of white noise at -40 dBFS RMS (float32, 16 kHz)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    half = SR // 4
    return np.concatenate([np.zeros(half), 0.01 * rng.standard_normal(half)]).astype(np.float32)


def make_speech(out: Path) -> None:
    """espeak-ng -> 16 kHz (soxr very-high quality) -> peak 0.9, float32 WAV."""
    import soundfile as sf
    import soxr

    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (apt install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "speech.wav"
        subprocess.run(SPEECH_CMD + ["-w", str(raw), SPEECH_TEXT], check=True)
        x, sr = sf.read(raw, dtype="float64")
    x = soxr.resample(x, sr, SR, quality="VHQ")
    x = 0.9 * x / np.max(np.abs(x))
    sf.write(out, x.astype(np.float32), SR, subtype="FLOAT")


STEREO_SR = 44100
STEREO_SPAN = (8000, 24000)  # speech.wav samples (voiced, the pause, voiced again)
STEREO_DELAY = 88  # samples at 44.1 kHz: the right channel lags, at 0.6x the level


def stereo_44k_signal(speech: np.ndarray) -> np.ndarray:
    """(N, 2) float64 at 44.1 kHz from 16 kHz speech: soxr VHQ up, the right channel a quieter, delayed copy (the
    channels differ, so channel mixing matters); written as 16-bit PCM."""
    import soxr

    left = soxr.resample(speech[STEREO_SPAN[0]:STEREO_SPAN[1]].astype(np.float64), SR, STEREO_SR, quality="VHQ")
    right = 0.6 * np.concatenate([np.zeros(STEREO_DELAY), left[:-STEREO_DELAY]])
    return np.stack([left, right], axis=1)


def write_synthetic(folder: Path) -> None:
    """harmonic.wav + harmonic_f0.csv, silence_noise.wav, and speech_44k_stereo.wav from speech.wav."""
    import soundfile as sf

    sf.write(folder / "speech_44k_stereo.wav", stereo_44k_signal(read_wav(folder / "speech.wav")), STEREO_SR,
             subtype="PCM_16")
    sf.write(folder / "silence_noise.wav", silence_noise_signal(), SR, subtype="FLOAT")
    audio, truth = harmonic_signal()
    sf.write(folder / "harmonic.wav", audio, SR, subtype="FLOAT")
    np.savetxt(folder / "harmonic_f0.csv", truth, fmt="%.6f", delimiter=",", header="time_s,f0_hz", comments="")


def read_wav(path: Path) -> np.ndarray:
    """A committed 16 kHz mono float WAV as float32 (N,); anything else is a clear error."""
    import soundfile as sf

    audio, sr = sf.read(path, dtype="float32", always_2d=False)
    if sr != SR or audio.ndim != 1:
        raise ValueError(f"{path}: expected 16 kHz mono, got {sr} Hz with shape {audio.shape}")
    return audio


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Any committed WAV as float32, (N,) or (N, channels), and its rate (the pipeline's inputs)."""
    import soundfile as sf

    audio, sr = sf.read(path, dtype="float32", always_2d=False)
    return audio, int(sr)


def read_truth(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", skiprows=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rvc_mlx.testing.signals")
    p.add_argument("folder", type=Path)
    p.add_argument("--no-speech", action="store_true", help="only rewrite the synthetic inputs")
    a = p.parse_args(argv)
    a.folder.mkdir(parents=True, exist_ok=True)
    if not a.no_speech:
        make_speech(a.folder / "speech.wav")
    write_synthetic(a.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
