"""HuBERT / ContentVec: the twin equals transformers' HubertModel; the MLX port's public API, frame count,
layer selection, key spellings, strict loading and clear errors."""

import json
import shutil

import numpy as np
import pytest
import torch

from reference_torch.hubert import HuBERT as TwinHuBERT
from rvc_common.config import HUBERT
from rvc_mlx.checkpoints import CheckpointError
from rvc_mlx.hubert import HuBERT
from rvc_mlx.testing.components import GOLDEN
from rvc_mlx.testing.signals import read_wav


@pytest.fixture(scope="module")
def contentvec(parity):
    return parity.weights(parity.component("hubert")).path


@pytest.fixture(scope="module")
def speech():
    return read_wav(GOLDEN / "inputs" / "speech.wav")[3000:3000 + 4000]


@pytest.fixture(scope="module")
def twin32(contentvec):
    return TwinHuBERT.from_checkpoint(contentvec, dtype=torch.float32)


@pytest.fixture(scope="module")
def mlx_hubert(contentvec):
    return HuBERT.from_checkpoint(contentvec)


def test_twin_equals_transformers_hubert_on_every_hidden_state(contentvec, twin32, speech, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import HubertModel

    class HubertModelWithFinalProj(HubertModel):  # what RVC/Applio loads (rvc/lib/utils.py)
        def __init__(self, config):
            super().__init__(config)
            self.final_proj = torch.nn.Linear(config.hidden_size, config.classifier_proj_size)

    hf, info = HubertModelWithFinalProj.from_pretrained(str(contentvec), attn_implementation="eager",
                                                        output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    hf = hf.float().eval()
    x = torch.from_numpy(speech)[None]
    with torch.no_grad():
        out = hf(x, output_hidden_states=True)
        ours = twin32.hidden_states(speech)
        assert len(out.hidden_states) == len(ours) == 13
        for i, (a, b) in enumerate(zip(out.hidden_states, ours, strict=True)):
            assert torch.max(torch.abs(a - b)) <= 1e-6, f"hidden state {i}"
        assert torch.max(torch.abs(out.last_hidden_state - ours[-1])) <= 1e-6
        proj = hf.final_proj(out.hidden_states[9])[0].numpy()
    np.testing.assert_allclose(twin32.features(speech, layer=9, final_proj=True), proj, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [400, 719, 720, 4000, 32000])
def test_frame_count_is_floor_n_minus_400_over_320_plus_one(mlx_hubert, n):
    x = (0.01 * np.sin(np.arange(n) / 5)).astype(np.float32)
    assert mlx_hubert.features(x).shape == ((n - 400) // 320 + 1, 768)
    assert HUBERT.n_frames(n) == (n - 400) // 320 + 1


def test_input_shorter_than_one_receptive_field_is_a_clear_error(mlx_hubert, twin32):
    for model in (mlx_hubert, twin32):
        with pytest.raises(ValueError, match=r"audio too short for HuBERT: 399 samples; need >= 400"):
            model.features(np.zeros(399, np.float32))


@pytest.mark.parametrize("layer, final_proj, dim", [(12, False, 768), (9, True, 256), (12, True, 256), (9, False, 768)])
def test_layer_selection_matches_the_float64_twin(contentvec, mlx_hubert, speech, layer, final_proj, dim):
    oracle = TwinHuBERT.from_checkpoint(contentvec, dtype=torch.float64)
    ref = oracle.features(speech, layer=layer, final_proj=final_proj)
    got = mlx_hubert.features(speech, layer=layer, final_proj=final_proj)
    assert got.shape == ref.shape == (HUBERT.n_frames(speech.shape[0]), dim)
    assert np.max(np.abs(got - ref)) <= 1e-5 * np.max(np.abs(ref))


def test_layer_out_of_range_is_refused(mlx_hubert, speech):
    with pytest.raises(ValueError, match=r"layer must be in 0..12, got 13"):
        mlx_hubert.features(speech, layer=13)


def test_parametrizations_spelling_and_model_safetensors_load_identically(contentvec, mlx_hubert, speech, tmp_path):
    from safetensors.torch import save_file

    state = torch.load(contentvec / "pytorch_model.bin", weights_only=True)
    renamed = {k.replace(".weight_g", ".parametrizations.weight.original0")
                .replace(".weight_v", ".parametrizations.weight.original1"): v for k, v in state.items()}
    d = tmp_path / "cv"
    d.mkdir()
    shutil.copy(contentvec / "config.json", d / "config.json")
    save_file(renamed, str(d / "model.safetensors"))
    np.testing.assert_array_equal(HuBERT.from_checkpoint(d).features(speech), mlx_hubert.features(speech))
    twin = TwinHuBERT.from_checkpoint(d)
    ref = TwinHuBERT.from_checkpoint(contentvec)
    np.testing.assert_array_equal(twin.features(speech), ref.features(speech))


def test_unsupported_architecture_and_missing_keys_are_named(contentvec, tmp_path):
    d = tmp_path / "cv"
    d.mkdir()
    cfg = json.loads((contentvec / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "do_stable_layer_norm": True}))
    shutil.copy(contentvec / "pytorch_model.bin", d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="do_stable_layer_norm=True is not supported"):
        HuBERT.from_checkpoint(d)
    state = torch.load(contentvec / "pytorch_model.bin", weights_only=True)
    del state["encoder.layers.3.final_layer_norm.bias"]
    torch.save(state, d / "pytorch_model.bin")
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing keys: encoder.layers.3.final_layer_norm.bias"):
        HuBERT.from_checkpoint(d)
    with pytest.raises(CheckpointError, match="not a ContentVec directory"):
        HuBERT.from_checkpoint(tmp_path)


def test_synthetic_contentvec_is_full_size_with_trained_like_statistics(contentvec):
    state = torch.load(contentvec / "pytorch_model.bin", weights_only=True)
    assert abs(sum(v.numel() for v in state.values()) / 1e6 - 94.6) < 0.05
    g, v = state["encoder.pos_conv_embed.conv.weight_g"], state["encoder.pos_conv_embed.conv.weight_v"]
    assert g.shape == (1, 1, 128) and v.shape == (768, 48, 128)
    norms = torch.linalg.vector_norm(v, dim=(0, 1))
    assert torch.all(torch.abs(g.flatten() - norms) > 1.0)
    gains = state["encoder.layers.0.layer_norm.weight"]
    assert not torch.allclose(gains, torch.ones_like(gains))
    assert json.loads((contentvec / "config.json").read_text())["transformers_version"] == "4.27.3"


def test_attention_in_query_chunks_and_whole_both_match_the_float64_twin(mlx_hubert, twin32, contentvec, speech):
    """Chunked queries are exact in arithmetic (softmax is per row) but not in float32 (the GEMMs round by row
    count, differently per BLAS kernel): each path is judged against the float64 oracle, as torch float32 is."""
    from rvc_mlx import dispatch
    from rvc_mlx.testing.metrics import tensor_metrics

    oracle = TwinHuBERT.from_checkpoint(contentvec, dtype=torch.float64).features(speech, layer=12)
    torch_err = tensor_metrics(twin32.features(speech, layer=12), oracle)
    import mlx.nn as nn

    from rvc_mlx.testing.taps import LayoutMap, LayoutRule, MLXRecorder

    whole = np.array(mlx_hubert.features_mx(speech, layer=12))
    with dispatch.use_chunks(attention_rows=5), MLXRecorder(nn.Module(), LayoutMap((LayoutRule("*", "same"),))) as rec:
        chunked = np.array(mlx_hubert.features_mx(speech, layer=12))  # queries 5 + 5 + 2 over the 12 frames
    assert rec.splits == {"hubert attention query chunks": 3}
    assert whole.shape == chunked.shape == (12, 768)
    for got in (whole, chunked):
        m = tensor_metrics(got, oracle)
        for key in ("max_rel", "rmse_rel"):
            assert m[key] <= 4 * torch_err[key] + 1e-6, (key, m[key], torch_err[key])
