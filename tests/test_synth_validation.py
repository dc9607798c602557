"""validate_rvc: an RVC model whose config list disagrees with its weights is refused with one line that names the
config field, its value and what the weights imply; every supported variant passes.

Building a synthetic checkpoint draws its ~27 M weights (about 2 s a variant here, 33 s for all 14), so make test
builds three that between them cover v1/v2, f0/no-f0, 32/40/48 kHz and 4/5 stages, and checks every variant's keys
and shapes through the torch twin built on the meta device (no weights drawn); the full sweep is marked slow.
"""

import functools
import time

import numpy as np
import pytest

from rvc_common.config import ConfigError, SynthConfig, synth_variants
from rvc_mlx.synthesizer.validate import validate_rvc

VARIANTS = sorted(synth_variants())
REPRESENTATIVE = ("v2-40k-f0", "v1-32k-nof0", "v1webui-48k-f0")


@functools.cache
def _state(variant: str) -> dict[str, np.ndarray]:
    """The `weight` dict of the synthetic .pth, as numpy (fp16, legacy weight_g/weight_v, no enc_q)."""
    from rvc_mlx.testing.synthetic import synth_checkpoint

    return {k: v.numpy() for k, v in synth_checkpoint(variant)["weight"].items()}


def _config(variant: str = "v2-40k-f0", f0: bool | None = None, version: str | None = None, **fields) -> SynthConfig:
    """The variant's config read back through from_list, as a file's would be, with `fields` replaced."""
    cfg = synth_variants()[variant]
    items = cfg.to_list()
    for field, value in fields.items():
        items[SynthConfig.FIELDS.index(field)] = value
    return SynthConfig.from_list(items, cfg.use_f0 if f0 is None else f0, version or cfg.version)


def _refusal(cfg: SynthConfig, state: dict) -> str:
    with pytest.raises(ConfigError) as e:
        validate_rvc(cfg, state, "model.pth")
    message = str(e.value)
    assert "\n" not in message and message.startswith("model.pth: ")
    return message


@pytest.mark.parametrize("variant", REPRESENTATIVE)
def test_representative_synthetic_checkpoints_pass(variant):
    validate_rvc(synth_variants()[variant], _state(variant), "model.pth")


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_synthetic_checkpoint_passes(variant):
    validate_rvc(synth_variants()[variant], _state(variant), "model.pth")


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_passes_with_the_twins_keys_in_the_parametrizations_spelling(variant):
    import torch

    from reference_torch.synthesizer.model import SynthesizerModel

    cfg = synth_variants()[variant]
    with torch.device("meta"):  # keys and shapes only: nothing is allocated or initialised
        keys = SynthesizerModel(cfg).state_dict()
    assert any(".parametrizations.weight.original1" in k for k in keys)
    validate_rvc(cfg, {k: np.broadcast_to(np.float16(0), v.shape) for k, v in keys.items()}, "model.pth")


def test_a_48k_config_on_40k_weights_is_refused_naming_sr_and_the_rate_the_weights_give():
    assert _refusal(_config(sr=48000), _state("v2-40k-f0")) == (
        "model.pth: config sr=48000 but upsample_rates 10x10x2x2 give 400 samples per 160-sample frame, "
        "i.e. a 40000 Hz model")


# (config changes, what the message must say besides field=value); every case is a v2-40k-f0 model's weights
MUTATIONS = {
    "sr": ({"sr": 44100}, "a 40000 Hz model"),
    "upsample_rates_vs_noise_convs": ({"upsample_rates": [20, 5, 2, 2]}, "kernels 80,8,4,1 imply ?x10x2x2"),
    "upsample_rates_stages": ({"upsample_rates": [10, 5, 2, 2, 2], "upsample_kernel_sizes": [16, 16, 4, 4, 4]},
                              "has 5 stages but the weights have 4 (dec.ups.0-3)"),
    "upsample_kernel_sizes": ({"upsample_kernel_sizes": [24, 20, 4, 4]}, "(512, 256, 16) has kernel 16"),
    "upsample_initial_channel": ({"upsample_initial_channel": 256}, "dec.conv_pre.weight (512, 192, 7) implies 512"),
    "inter_channels": ({"inter_channels": 256}, "dec.conv_pre.weight (512, 192, 7) implies 192"),
    "hidden_channels": ({"hidden_channels": 256}, "enc_p.emb_phone.weight (192, 768) implies 192"),
    "filter_channels": ({"filter_channels": 512}, "ffn_layers.0.conv_1.weight (768, 192, 3) implies 768"),
    "kernel_size": ({"kernel_size": 5}, "ffn_layers.0.conv_1.weight (768, 192, 3) implies 3"),
    "n_heads": ({"n_heads": 4}, "emb_rel_k (1, 21, 96) holds 96 channels per head, i.e. 2 heads"),
    "n_layers": ({"n_layers": 4}, "the weights have 6 attention layers (enc_p.encoder.attn_layers.0-5)"),
    "resblock_kernel_sizes": ({"resblock_kernel_sizes": [3, 7, 13]}, "(256, 256, 11) has kernel 11"),
    "resblock_kernel_sizes_count": ({"resblock_kernel_sizes": [3, 7], "resblock_dilation_sizes": [[1, 3, 5]] * 2},
                                    "the weights have 12 (dec.resblocks.0-11), kernels [3, 7, 11]"),
    "resblock_dilation_sizes": ({"resblock_dilation_sizes": [[1, 3, 5], [1, 3], [1, 3, 5]]},
                                "gives 2 dilated convs to resblock 1 but the weights have 3"),
    "spk_embed_dim": ({"spk_embed_dim": 4}, "emb_g.weight (109, 256) implies 109"),
    "gin_channels": ({"gin_channels": 512}, "emb_g.weight (109, 256) implies 256"),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_each_config_field_that_disagrees_with_its_tensor_is_named_with_both_values(case):
    changes, implied = MUTATIONS[case]
    message = _refusal(_config(**changes), _state("v2-40k-f0"))
    field = case.removesuffix("_count").removesuffix("_stages").removesuffix("_vs_noise_convs")
    value = changes[field]
    shown = "x".join(map(str, value)) if field == "upsample_rates" else str(value)
    assert f"config {field}={shown} " in message and implied in message, message


def test_a_flipped_f0_flag_is_refused_both_ways():
    assert "config f0=0 but the weights have enc_p.emb_pitch.weight and dec.m_source.l_linear.weight, i.e. a " \
           "pitch-guided model (f0=1)" in _refusal(_config(f0=False), _state("v2-40k-f0"))
    assert "config f0=1 (pitch-guided) but the weights have neither enc_p.emb_pitch nor dec.m_source, i.e. a " \
           "model without f0 (f0=0)" in _refusal(_config("v1-32k-nof0", f0=True), _state("v1-32k-nof0"))


def test_a_flipped_version_is_refused_both_ways():
    assert "config version=v1 takes 256-d content features but enc_p.emb_phone.weight (192, 768) takes 768, " \
           "i.e. a v2 model" in _refusal(_config(version="v1"), _state("v2-40k-f0"))
    assert "config version=v2 takes 768-d content features but enc_p.emb_phone.weight (192, 256) takes 256, " \
           "i.e. a v1 model" in _refusal(_config("v1-32k-nof0", version="v2"), _state("v1-32k-nof0"))


def test_a_stray_key_is_refused_by_name():
    state = dict(_state("v2-40k-f0"), **{"dec.extra.weight": np.zeros((4, 4), np.float16)})
    message = _refusal(_config(), state)
    assert "do not match the model the config describes (v2-40k-f0): 1 unexpected (dec.extra.weight)" in message


def test_missing_keys_and_broken_weight_norm_pairs_are_listed_in_one_line():
    state = dict(_state("v2-40k-f0"))
    del state["dec.conv_post.weight"], state["dec.ups.1.weight_g"]
    state["dec.ups.2.weight_g"] = np.zeros((64, 1, 2), np.float16)
    message = _refusal(_config(), state)
    assert "2 missing (dec.conv_post.weight, dec.ups.1.weight_g)" in message
    assert "1 of another shape (dec.ups.2.weight_g (64, 1, 2) for (128, 1, 1))" in message


def test_spec_channels_is_checked_against_enc_q_and_otherwise_left_alone():
    # Inference never builds enc_q, so only a file that still holds it can contradict spec_channels.
    assert validate_rvc(_config(spec_channels=513), _state("v2-40k-f0"), "model.pth") is None
    state = dict(_state("v2-40k-f0"))
    state.update({"enc_q.pre.weight": np.zeros((192, 1025, 1), np.float16), "enc_q.pre.bias": np.zeros(192),
                  "enc_q.enc.in_layers.0.weight_g": np.zeros((384, 1, 1)),
                  "enc_q.enc.in_layers.0.weight_v": np.zeros((384, 192, 5))})
    validate_rvc(_config(), state, "model.pth")
    assert "config spec_channels=513 but enc_q.pre.weight (192, 1025, 1) implies 1025 (filter_length 2048)" in \
        _refusal(_config(spec_channels=513), state)


def test_dilation_values_leave_no_trace_in_the_weights_and_pass():
    validate_rvc(_config(resblock_dilation_sizes=[[1, 2, 4]] * 3), _state("v2-40k-f0"), "model.pth")


def test_validating_a_real_size_model_takes_well_under_a_second():
    cfg, state = synth_variants()["v2-40k-f0"], _state("v2-40k-f0")
    assert sum(v.size for v in state.values()) > 27_000_000  # Applio's 40 kHz v2 architecture, full size
    validate_rvc(cfg, state, "model.pth")  # first call imports the MLX model modules
    times = []
    for _ in range(3):
        start = time.perf_counter()
        validate_rvc(cfg, state, "model.pth")
        times.append(time.perf_counter() - start)
    assert min(times) < 0.25, times
