"""The MLX pipeline against the live PyTorch twin pipeline (no golden): every synthesizer variant and every f0
method converts a speech crop like the twin (SNR >= 60 dB, the same coarse pitch). `make parity` runs them; the
golden cases of tests/parity/test_parity.py judge the pipeline tap by tap."""

import numpy as np
import pytest

from rvc_common.config import synth_variants

VARIANTS = [v for v in synth_variants() if not v.startswith("v1webui")]


def _live(parity, variant, f0_method, seconds=0.6):
    """Twin (float32) and MLX pipelines on a speech crop; returns both outputs and the twin's coarse pitch."""
    import torch

    from rvc_mlx.pipeline import ConvertOptions
    from rvc_mlx.testing.components import CaseSpec
    from rvc_mlx.testing.signals import read_wav
    from rvc_mlx.testing.taps import MLXRecorder, TorchRecorder

    comp = parity.component("pipeline")
    spec = CaseSpec("pipeline", f"live-{variant}-{f0_method}", "speech.wav", variant=variant, f0_method=f0_method,
                    index=True)
    w = comp.weights(None, spec)
    audio = read_wav(comp_input := (parity.store.root / "inputs" / "speech.wav"))[3000:3000 + int(16000 * seconds)]
    assert comp_input.is_file()
    twin = comp.twin(w, torch.float32)
    with TorchRecorder(torch.nn.Module(), "model", select=["pipeline.pitch_coarse"]) as trec:
        ref = twin.convert(audio.astype(np.float64), 16000, f0_method=f0_method, index_rate=0.75, protect=0.33)
    import mlx.nn as nn

    with MLXRecorder(nn.Module(), comp.layouts, root="model", select=["pipeline.pitch_coarse"]) as mrec:
        out = comp.mlx(w).convert(audio, 16000, ConvertOptions(f0_method=f0_method, protect=0.33))[0]
    return out, ref, trec.values(), mrec.values()


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_synthesizer_variant_converts_like_the_twin_pipeline(parity, variant):
    from rvc_mlx.testing.audio_metrics import audio_metrics

    out, ref, tv, mv = _live(parity, variant, "rmvpe")
    sr = synth_variants()[variant].sr
    m = audio_metrics(out.astype(np.float64), ref.astype(np.float64), sr)
    assert m["snr_db"] >= 60.0, m
    if synth_variants()[variant].use_f0:
        np.testing.assert_array_equal(mv["pipeline.pitch_coarse"], tv["pipeline.pitch_coarse"])


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("f0_method", ["rmvpe", "crepe", "crepe-tiny", "fcpe"])
def test_every_f0_method_converts_like_the_twin_pipeline(parity, f0_method):
    from rvc_mlx.testing.audio_metrics import audio_metrics

    out, ref, tv, mv = _live(parity, "v2-40k-f0", f0_method)
    m = audio_metrics(out.astype(np.float64), ref.astype(np.float64), 40000)
    assert m["snr_db"] >= 60.0, m
    np.testing.assert_array_equal(mv["pipeline.pitch_coarse"], tv["pipeline.pitch_coarse"])
