"""End-to-end conversion: the MLX pipeline agrees with the twin of Applio's pipeline (same chunk boundaries, same
coarse pitch, final audio >= 60 dB SNR), the CLI writes WAVs at the model's rate, and bad audio is converted or
refused with one line."""

import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rvc_common.config import PIPELINE
from rvc_mlx.pipeline import ConvertOptions, split_points
from rvc_mlx.pipeline_audio import AudioError, rms_mix, to_16k_mono
from rvc_mlx.testing.signals import read_wav

SPEECH = Path(__file__).resolve().parents[1] / "golden" / "inputs" / "speech.wav"


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "rvc_mlx.cli", *map(str, args)], capture_output=True, text=True,
                          env=env)


def sixty_seconds() -> np.ndarray:
    """60 s of speech-like material: the speech input repeated with pauses of digital silence and of noise."""
    speech = read_wav(SPEECH).astype(np.float64)
    rng = np.random.Generator(np.random.PCG64(5))
    parts, n = [], 0
    while n < 60 * 16000:
        gap = np.zeros(int(rng.integers(800, 6000))) if len(parts) % 4 else 1e-3 * rng.standard_normal(3000)
        chunk = speech * rng.uniform(0.3, 1.0)
        parts += [chunk, gap]
        n += chunk.shape[0] + gap.shape[0]
    return np.concatenate(parts)[:60 * 16000]


def test_sixty_second_input_is_split_at_the_same_points_as_the_original():
    from reference_torch.pipeline import Pipeline as TwinPipeline

    audio = sixty_seconds()
    twin = TwinPipeline.__new__(TwinPipeline)  # split_points only needs the constants
    TwinPipeline.__init__(twin, None, type("S", (), {"cfg": type("C", (), {"sr": 40000})()})())
    ours, theirs = split_points(audio), twin.split_points(audio)
    assert ours == theirs
    assert len(ours) == 1 and abs(ours[0] - PIPELINE.t_center) <= PIPELINE.t_query
    assert split_points(audio[:PIPELINE.t_max - 160]) == twin.split_points(audio[:PIPELINE.t_max - 160]) == []


def test_audio_is_made_mono_16k_float_from_stereo_int_and_other_rates():
    rng = np.random.default_rng(0)
    tone = np.sin(2 * np.pi * 220 * np.arange(48000) / 48000)
    stereo = np.stack([tone, 0.5 * tone], axis=1)
    np.testing.assert_allclose(to_16k_mono(stereo, 16000), 0.75 * tone, atol=1e-12)
    pcm = (tone * 20000).astype(np.int16)
    np.testing.assert_allclose(to_16k_mono(pcm, 16000), pcm / 32768.0, atol=1e-12)
    for sr in (8000, 44100, 96000):
        x = rng.standard_normal(sr)  # one second
        assert to_16k_mono(x, sr).shape[0] == 16000


@pytest.mark.parametrize("audio,sr,message", [
    (np.zeros(0), 16000, "input audio is empty"),
    (np.zeros(100), 16000, "too short: 100 samples"),
    (np.zeros(300), 44100, "too short"),
    (np.array([0.0, np.nan] * 800), 16000, "NaN or Inf"),
    (np.full(2000, np.inf), 16000, "NaN or Inf"),
    (np.zeros((2, 3, 4000)), 16000, "expected (samples,) or (samples, channels)"),
    (np.zeros(4000), 0, "unsupported sample rate"),
])
def test_bad_audio_is_refused_with_one_line(audio, sr, message):
    with pytest.raises(AudioError) as e:
        to_16k_mono(audio, sr)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs,message", [
    ({"f0_method": "harvest"}, "unknown f0 method"), ({"index_rate": 1.5}, "index_rate"),
    ({"protect": 0.7}, "protect"), ({"rms_mix": -1}, "rms_mix"), ({"pitch": 100}, "pitch shift"),
])
def test_conversion_options_out_of_range_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConvertOptions(**kwargs).check()


def test_rms_mix_equals_the_original_change_rms():
    from reference_torch.pipeline import change_rms

    rng = np.random.default_rng(1)
    src = rng.standard_normal(16000 * 3) * np.linspace(0.1, 1, 16000 * 3)
    out = (rng.standard_normal(40000 * 3) * np.linspace(1, 0.2, 40000 * 3)).astype(np.float32)
    for rate in (0.0, 0.3, 0.8):
        np.testing.assert_allclose(rms_mix(src, 16000, out, 40000, rate), change_rms(src, 16000, out, 40000, rate),
                                   rtol=2e-5, atol=1e-7)


@pytest.fixture(scope="module")
def models(parity):
    """Synthetic v2 40k f0 model, ContentVec, RMVPE and index (generated once, cached)."""
    comp = parity.component("pipeline")
    case = comp.spec.case("speech-v2-40k-f0")
    w = parity.weights(comp, case.name)
    return comp._models(w)


def test_cli_converts_speech_with_index_and_the_twin_pipeline_agrees(models, tmp_path):
    import torch

    from reference_torch.hubert import HuBERT
    from reference_torch.pipeline import Pipeline as TwinPipeline
    from reference_torch.rmvpe import RMVPE
    from reference_torch.synthesizer.model import Synthesizer

    out = tmp_path / "out.wav"
    res = _cli("convert", SPEECH, "-m", models.synth, "--index", models.index, "--hubert", models.hubert,
               "--rmvpe", models.pitch["rmvpe"], "--protect", "0.33", "--seed", "3", "-o", out)
    assert res.returncode == 0, res.stderr
    assert "40000 Hz" in res.stdout
    audio, sr = sf.read(out, dtype="float32")
    assert sr == 40000 and audio.ndim == 1
    speech = read_wav(SPEECH)
    # the original loses up to ~1.5 HuBERT frames (20 ms each) at the end: at most 1600 samples at 40 kHz
    assert 0 <= speech.shape[0] * 40000 / 16000 - audio.shape[0] <= 1600
    twin = TwinPipeline(HuBERT.from_checkpoint(models.hubert), Synthesizer.from_checkpoint(models.synth),
                        {"rmvpe": RMVPE.from_checkpoint(models.pitch["rmvpe"])}, models.index)
    from rvc_mlx.testing.taps import TorchRecorder

    with TorchRecorder(torch.nn.Module(), "model") as rec:
        ref = twin.convert(speech.astype(np.float64), 16000, index_rate=0.75, protect=0.33, seed=3)
    from rvc_mlx.testing.audio_metrics import audio_metrics

    assert ref.shape == audio.shape
    m = audio_metrics(audio.astype(np.float64), ref.astype(np.float64), 40000)
    assert m["snr_db"] >= 60.0, m
    # the coarse pitch bins the synthesizer saw are identical (MLX: the same steps up to the pitch track)
    from rvc_mlx.hubert import HuBERT as MLXHuBERT
    from rvc_mlx.pipeline import Pipeline, pitch_loaders
    from rvc_mlx.synthesizer.model import Synthesizer as MLXSynthesizer

    pipe = Pipeline(MLXHuBERT.from_checkpoint(models.hubert), MLXSynthesizer.from_checkpoint(models.synth),
                    pitch_loaders(rmvpe=models.pitch["rmvpe"]))
    audio_pad = np.pad(pipe.prepare(speech, 16000), (PIPELINE.t_pad, PIPELINE.t_pad), mode="reflect")
    coarse, f0 = pipe.pitch_track(audio_pad, ConvertOptions())
    np.testing.assert_array_equal(coarse, rec.records["pipeline.pitch_coarse"].value)
    assert 0.2 < np.mean(coarse > 1) < 0.95, "the input should hold voiced and unvoiced frames"


def test_cli_converts_stereo_int16_96k_input_with_a_model_without_pitch(parity, models, tmp_path):
    """The original crashes on no-f0 models (`pitchf.float()` on None); here they convert."""
    from rvc_mlx.testing.synthetic import cached_checkpoint

    nof0 = cached_checkpoint("synth-v2-32k-nof0")
    speech = read_wav(SPEECH)[4000:12000]
    import librosa

    x96 = librosa.resample(speech.astype(np.float64), orig_sr=16000, target_sr=96000)
    stereo = (np.stack([x96, 0.8 * x96], axis=1) * 30000).astype(np.int16)
    src = tmp_path / "in.wav"
    sf.write(src, stereo, 96000, subtype="PCM_16")
    out = tmp_path / "out.wav"
    res = _cli("convert", src, "-m", nof0, "--hubert", models.hubert, "-o", out)
    assert res.returncode == 0, res.stderr
    audio, sr = sf.read(out)
    assert sr == 32000 and audio.ndim == 1 and np.all(np.isfinite(audio)) and np.abs(audio).max() <= 0.99 + 1e-6
    assert 0 <= 0.5 * 32000 - audio.shape[0] <= 1280


@pytest.mark.parametrize("kind", ["nan", "empty", "tiny", "missing", "not-audio"])
def test_cli_refuses_bad_audio_with_one_line(models, tmp_path, kind):
    src = tmp_path / "in.wav"
    if kind == "nan":
        sf.write(src, np.array([0.1, np.nan] * 4000, dtype=np.float32), 16000, subtype="FLOAT")
    elif kind == "empty":
        sf.write(src, np.zeros(0, dtype=np.float32), 16000, subtype="FLOAT")
    elif kind == "tiny":
        sf.write(src, np.zeros(100, dtype=np.float32), 16000, subtype="FLOAT")
    elif kind == "not-audio":
        src.write_bytes(b"RIFF????WAVEjunk")
    res = _cli("convert", src, "-m", models.synth, "--hubert", models.hubert, "--rmvpe", models.pitch["rmvpe"],
               "-o", tmp_path / "out.wav")
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith("rvc-mlx: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out.wav").exists()


def test_cli_info_prints_the_variant(models):
    res = _cli("info", models.synth)
    assert res.returncode == 0, res.stderr
    assert "variant v2-40k-f0" in res.stdout and "40000 Hz" in res.stdout


# 45 s on 2 cores (4.6 s of audio through both pipelines): in make parity. make test judges the same multi-segment
# path step by step in the golden case stereo44k-segments-v2-32k-f0 (three segments, smaller constants).
@pytest.mark.slow
def test_chunked_conversion_matches_the_twin_segment_by_segment(models):
    """The multi-segment path (split, per-segment synthesis, trimming, concatenation) on both sides, made short
    with split constants scaled from 38/6/41 s to 2/1/3 s: same boundaries, same segments, same audio."""
    import torch

    from reference_torch.hubert import HuBERT
    from reference_torch.pipeline import Pipeline as TwinPipeline
    from reference_torch.rmvpe import RMVPE
    from reference_torch.synthesizer.model import Synthesizer
    from rvc_common.config import PipelineConfig
    from rvc_mlx.hubert import HuBERT as MLXHuBERT
    from rvc_mlx.pipeline import Pipeline, pitch_loaders
    from rvc_mlx.synthesizer.model import Synthesizer as MLXSynthesizer
    from rvc_mlx.testing.audio_metrics import audio_metrics
    from rvc_mlx.testing.taps import LayoutMap, LayoutRule, MLXRecorder, TorchRecorder

    cfg = PipelineConfig(x_query=1, x_center=2, x_max=3)
    speech = read_wav(SPEECH).astype(np.float64)
    audio = np.concatenate([speech, 0.7 * speech])[:int(4.6 * 16000)]
    twin = TwinPipeline(HuBERT.from_checkpoint(models.hubert), Synthesizer.from_checkpoint(models.synth),
                        {"rmvpe": RMVPE.from_checkpoint(models.pitch["rmvpe"])}, cfg=cfg)
    pipe = Pipeline(MLXHuBERT.from_checkpoint(models.hubert), MLXSynthesizer.from_checkpoint(models.synth),
                    pitch_loaders(rmvpe=models.pitch["rmvpe"]), cfg=cfg)
    filtered = pipe.prepare(audio, 16000)
    assert split_points(filtered, cfg) == twin.split_points(filtered) and len(split_points(filtered, cfg)) == 2
    with TorchRecorder(torch.nn.Module(), "model", select=["pipeline.segment_audio*"]) as trec:
        ref = twin.convert(audio, 16000, index_rate=0.0, seed=5)
    with MLXRecorder(nn_module(), LayoutMap((LayoutRule("*", output="same"),)), root="model",
                     select=["pipeline.segment_audio*"]) as mrec:
        out, sr = pipe.convert(audio, 16000, ConvertOptions(index_rate=0.0, seed=5))
    tv, mv = trec.values(), mrec.values()
    segments = ["pipeline.segment_audio", "pipeline.segment_audio#2", "pipeline.segment_audio#3"]
    assert sorted(tv) == sorted(mv) == segments
    for name in tv:
        assert mv[name].shape == tv[name].shape, name
    assert audio_metrics(out.astype(np.float64), ref.astype(np.float64), sr)["snr_db"] >= 60.0


def nn_module():
    import mlx.nn as nn

    return nn.Module()


def _full_disk(limit: int):
    """preexec_fn: files may not grow past `limit` bytes; the write fails with EFBIG as a full disk's does."""
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_cli_output_survives_a_full_disk_and_replaces_the_input_only_when_asked(models, tmp_path):
    from rvc_mlx.cli import main
    from rvc_mlx.hubert import HuBERT
    from rvc_mlx.rmvpe import RMVPE
    from rvc_mlx.synthesizer.model import Synthesizer

    src = tmp_path / "in.wav"
    speech = read_wav(SPEECH)[:16000]
    sf.write(src, speech, 16000, subtype="FLOAT")
    common = ["-m", models.synth, "--hubert", models.hubert, "--rmvpe", models.pitch["rmvpe"]]
    # converted weights in the cache first: under the size limit only the output's write may fail
    Synthesizer.from_checkpoint(models.synth), HuBERT.from_checkpoint(models.hubert)
    RMVPE.from_checkpoint(models.pitch["rmvpe"])
    out = tmp_path / "out.wav"
    out.write_bytes(b"the previous result")
    res = subprocess.run([sys.executable, "-m", "rvc_mlx.cli", "convert", *map(str, [src, *common, "-o", out])],
                         capture_output=True, text=True, preexec_fn=_full_disk(100_000))  # output: ~160 kB
    assert res.returncode == 2
    assert res.stderr == f"rvc-mlx: cannot write {out}: File too large; the existing file is unchanged\n"
    assert out.read_bytes() == b"the previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav", "out.wav"]  # no temp file left
    assert main(["convert", *map(str, [src, *common, "-o", src, "--overwrite"])]) == 0
    # the input replaced by the complete conversion, not a fragment
    audio, sr = sf.read(src, dtype="float32")
    assert sr == 40000 and 0 <= speech.shape[0] * 40000 / 16000 - audio.shape[0] <= 1600
    assert np.all(np.isfinite(audio)) and np.sqrt(np.mean(audio * audio)) > 1e-3


def test_a_model_whose_config_disagrees_with_its_weights_is_invalid_for_info_and_convert(models, tmp_path,
                                                                                         capsys):
    import torch

    from rvc_mlx.cli import main

    ckpt = torch.load(models.synth, weights_only=True)
    ckpt["config"][-1] = 48000  # a 40 kHz model (10x10x2x2 = 400 samples per frame) labelled 48 kHz
    bad = tmp_path / "model.pth"
    torch.save(ckpt, bad)
    why = (f"rvc-mlx: {bad}: invalid RVC model: config sr=48000 but upsample_rates 10x10x2x2 give 400 samples per "
           "160-sample frame, i.e. a 40000 Hz model\n")
    assert main(["info", str(bad)]) == 2
    assert capsys.readouterr().err == why
    src = tmp_path / "in.wav"
    sf.write(src, read_wav(SPEECH)[:8000], 16000)
    args = ["convert", str(src), "-m", str(bad), "--hubert", str(models.hubert), "-o", str(tmp_path / "o.wav")]
    assert main(args) == 2
    assert capsys.readouterr().err == why
    assert not (tmp_path / "o.wav").exists()
