"""Refuse an RVC model whose config list disagrees with its weights, naming the config field at fault.

The original reader builds the network from `cpt["config"]` and loads the weights with strict=False, so a config
that disagrees with its weights either fails deep inside a forward or, where every tensor shape survives the
disagreement (sr), silently writes audio at the wrong rate. Here each config field that shapes a tensor is
compared with the tensor it shapes, in an order that names the root cause first (checkpoint flags, then the
upsampling the output rate rests on, then widths and counts); whatever is left is compared key by key with the
model this port builds from the config. Only shapes are read, never values, so a full-size model takes milliseconds.

Fields left alone, since they do not reach inference: segment_size and p_dropout (training only), and
spec_channels unless the file still holds enc_q (see `_spec_channels`). What leaves no trace in the weights cannot
be checked: resblock dilation values (a dilated conv has the same weight shape), the first upsample rate (f0
models' noise_convs encode only the later ones) and, without f0, each rate on its own (only their number, and
through sr their product, are checked).
"""

from __future__ import annotations

import math

import numpy as np

from rvc_common.config import ConfigError, SynthConfig

FRAME_RATE = 100  # content and pitch frames per second (16 kHz, hop 160), so a model's rate is 100 * upp


class _Weights:
    """A torch-layout state dict seen through its shapes, with weight norm folded in name only: a pair
    `x.weight_g`/`x.weight_v` (or `x.parametrizations.weight.original0/1`) reads as `x.weight` with v's shape,
    so that checks need not care which spelling a file uses; messages quote the key as the file spells it."""

    def __init__(self, state: dict[str, np.ndarray]):
        from rvc_mlx.checkpoints import _PARAMETRIZED  # imported here: checkpoints imports this module

        self.shape: dict[str, tuple[int, ...]] = {}
        self.name: dict[str, str] = {}
        self.gain: dict[str, tuple[str, tuple[int, ...]]] = {}  # folded name -> (g's key, g's shape)
        for key, value in state.items():
            legacy = key
            for old, new in _PARAMETRIZED.items():
                if key.endswith(old):
                    legacy = key[: -len(old)] + new
            shape = tuple(int(n) for n in np.shape(value))
            if legacy.endswith(".weight_g"):
                self.gain[legacy[:-2]] = (key, shape)
                continue
            folded = legacy[:-2] if legacy.endswith(".weight_v") else legacy
            self.shape[folded] = shape
            self.name[folded] = key

    def get(self, key: str, rank: int) -> tuple[int, ...] | None:
        """The shape of `key` if present with `rank` axes; otherwise None, left for the key-by-key check."""
        shape = self.shape.get(key)
        return shape if shape is not None and len(shape) == rank else None

    def show(self, key: str) -> str:
        return f"{self.name[key]} {self.shape[key]}"

    def indices(self, prefix: str) -> list[int]:
        """The list indices N present under `prefix.N.` (a module list's length, if it has no gaps)."""
        found = set()
        for key in self.shape:
            if key.startswith(prefix + "."):
                head = key[len(prefix) + 1:].split(".", 1)[0]
                if head.isdigit():
                    found.add(int(head))
        return sorted(found)


def _rates(rates) -> str:
    return "x".join(str(u) for u in rates)


def _listed(values) -> str:
    return str([list(v) if isinstance(v, tuple) else v for v in values])


def _span(prefix: str, indices: list[int]) -> str:
    return f"{prefix}.{indices[0]}-{indices[-1]}" if len(indices) > 1 else f"{prefix}.{indices[0]}"


def _f0(cfg: SynthConfig, w: _Weights) -> str | None:
    # The pitch embedding and the sine source exist only in f0 models; a flipped flag changes the whole decoder.
    marks = [k for k in ("enc_p.emb_pitch.weight", "dec.m_source.l_linear.weight") if k in w.shape]
    if cfg.use_f0 and not marks:
        return ("config f0=1 (pitch-guided) but the weights have neither enc_p.emb_pitch nor dec.m_source, "
                "i.e. a model without f0 (f0=0)")
    if not cfg.use_f0 and marks:
        return f"config f0=0 but the weights have {' and '.join(marks)}, i.e. a pitch-guided model (f0=1)"
    return None


def _version(cfg: SynthConfig, w: _Weights) -> str | None:
    # The version only selects the content features' width: 768 (v2, layer 12) or 256 (v1, final_proj).
    shape = w.get("enc_p.emb_phone.weight", 2)
    if shape is None or shape[1] == cfg.text_enc_hidden_dim:
        return None
    implied = {768: ", i.e. a v2 model", 256: ", i.e. a v1 model"}.get(shape[1], "")
    return (f"config version={cfg.version} takes {cfg.text_enc_hidden_dim}-d content features but "
            f"{w.show('enc_p.emb_phone.weight')} takes {shape[1]}{implied}")


def _upsample_rates(cfg: SynthConfig, w: _Weights) -> str | None:
    # Checked before sr: when the weights contradict the rates, the rates are wrong, not sr.
    ups = w.indices("dec.ups")
    if ups and len(ups) != len(cfg.upsample_rates):
        return (f"config upsample_rates={_rates(cfg.upsample_rates)} has {len(cfg.upsample_rates)} stages but the "
                f"weights have {len(ups)} ({_span('dec.ups', ups)})")
    if not cfg.use_f0:
        return None  # without noise_convs only the number of stages shows in the weights
    # noise_convs.i brings the sine source (at the output rate) down to stage i's rate: its stride is the
    # product of the later rates s, its kernel 2*s - s % 2 (1 for s = 1), so the kernel gives s = (kernel+1) // 2.
    shapes = [w.get(f"dec.noise_convs.{i}.weight", 3) for i in range(len(cfg.upsample_rates))]
    if any(s is None for s in shapes):
        return None
    strides = [(s[2] + 1) // 2 for s in shapes]
    wanted = [math.prod(cfg.upsample_rates[i + 1:]) for i in range(len(cfg.upsample_rates))]
    if strides == wanted:
        return None
    later = [str(a // b) if b and a % b == 0 else "?" for a, b in zip(strides[:-1], strides[1:], strict=True)]
    return (f"config upsample_rates={_rates(cfg.upsample_rates)} but dec.noise_convs kernels "
            f"{','.join(str(s[2]) for s in shapes)} imply {_rates(['?', *later])} "
            "(noise_convs.i spans the product of the rates after stage i)")


def _sr(cfg: SynthConfig, w: _Weights) -> str | None:
    # The only config field that shapes no tensor yet decides the output: each 160-sample frame becomes upp samples,
    # written at sr; any other sr plays the audio at the wrong speed and pitch (and mis-tunes the f0 sine source).
    if cfg.sr == FRAME_RATE * cfg.upp:
        return None
    return (f"config sr={cfg.sr} but upsample_rates {_rates(cfg.upsample_rates)} give {cfg.upp} samples per "
            f"160-sample frame, i.e. a {FRAME_RATE * cfg.upp} Hz model")


# (field, key, rank, axis): the axis of the tensor whose length is the field, from the constructors (torch
# layout). hidden_channels comes before n_heads, whose check divides by it.
_WIDTHS = (
    ("hidden_channels", "enc_p.emb_phone.weight", 2, 0),  # Linear(768|256 -> hidden)
    ("inter_channels", "dec.conv_pre.weight", 3, 1),  # Conv1d(inter -> upsample_initial_channel, 7)
    ("upsample_initial_channel", "dec.conv_pre.weight", 3, 0),
    ("filter_channels", "enc_p.encoder.ffn_layers.0.conv_1.weight", 3, 0),  # Conv1d(hidden -> filter, kernel_size)
    ("kernel_size", "enc_p.encoder.ffn_layers.0.conv_1.weight", 3, 2),
    ("spk_embed_dim", "emb_g.weight", 2, 0),  # Embedding(spk_embed_dim, gin_channels)
    ("gin_channels", "emb_g.weight", 2, 1),
)


def _widths(cfg: SynthConfig, w: _Weights) -> str | None:
    for field, key, rank, axis in _WIDTHS:
        shape = w.get(key, rank)
        if shape is not None and shape[axis] != getattr(cfg, field):
            return f"config {field}={getattr(cfg, field)} but {w.show(key)} implies {shape[axis]}"
    return None


def _attention(cfg: SynthConfig, w: _Weights) -> str | None:
    layers = w.indices("enc_p.encoder.attn_layers")
    if layers and len(layers) != cfg.n_layers:
        return (f"config n_layers={cfg.n_layers} but the weights have {len(layers)} attention layers "
                f"({_span('enc_p.encoder.attn_layers', layers)})")
    # Relative embeddings are shared by the heads: (1, 2 * window + 1, hidden / n_heads).
    key = "enc_p.encoder.attn_layers.0.emb_rel_k"
    shape = w.get(key, 3)
    if shape is None or shape[2] == cfg.hidden_channels // cfg.n_heads:
        return None
    heads = cfg.hidden_channels / shape[2]
    implied = f"{int(heads)} heads" if heads == int(heads) else "a width that does not divide hidden_channels"
    return (f"config n_heads={cfg.n_heads} but {w.show(key)} holds {shape[2]} channels per head, i.e. {implied} "
            f"of hidden_channels={cfg.hidden_channels}")


def _upsample_kernels(cfg: SynthConfig, w: _Weights) -> str | None:
    # ConvTranspose1d weights are (C_in, C_out, kernel).
    shapes = [w.get(f"dec.ups.{i}.weight", 3) for i in range(len(cfg.upsample_kernel_sizes))]
    for i, (shape, k) in enumerate(zip(shapes, cfg.upsample_kernel_sizes, strict=True)):
        if shape is not None and shape[2] != k:
            kernels = [s[2] if s is not None else "?" for s in shapes]
            return (f"config upsample_kernel_sizes={_listed(cfg.upsample_kernel_sizes)} but "
                    f"{w.show(f'dec.ups.{i}.weight')} has kernel {shape[2]} (all stages: {_listed(kernels)})")
    return None


def _resblocks(cfg: SynthConfig, w: _Weights) -> str | None:
    # Every stage holds one ResBlock per (kernel, dilations) pair: dec.resblocks.(stage * per_stage + j).
    blocks = w.indices("dec.resblocks")
    stages, per_stage = len(cfg.upsample_rates), len(cfg.resblock_kernel_sizes)
    kernel = lambda j: (w.get(f"dec.resblocks.{j}.convs1.0.weight", 3) or (0, 0, "?"))[2]  # noqa: E731
    if blocks and len(blocks) != stages * per_stage:
        implied = f", kernels {_listed(kernel(j) for j in range(len(blocks) // stages))}" \
            if len(blocks) % stages == 0 else ""
        return (f"config resblock_kernel_sizes={_listed(cfg.resblock_kernel_sizes)} gives {per_stage} resblocks per "
                f"stage ({stages * per_stage} for {stages} stages) but the weights have {len(blocks)} "
                f"({_span('dec.resblocks', blocks)}){implied}")
    for j, (k, dilations) in enumerate(zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)):
        key = f"dec.resblocks.{j}.convs1.0.weight"
        if w.get(key, 3) is not None and kernel(j) != k:
            return (f"config resblock_kernel_sizes={_listed(cfg.resblock_kernel_sizes)} but {w.show(key)} has kernel "
                    f"{kernel(j)} (all: {_listed(kernel(i) for i in range(per_stage))})")
        convs = w.indices(f"dec.resblocks.{j}.convs1")
        if convs and len(convs) != len(dilations):
            return (f"config resblock_dilation_sizes={_listed(cfg.resblock_dilation_sizes)} gives {len(dilations)} "
                    f"dilated convs to resblock {j} but the weights have {len(convs)} "
                    f"({_span(f'dec.resblocks.{j}.convs1', convs)})")
    return None


def _spec_channels(cfg: SynthConfig, w: _Weights) -> str | None:
    # spec_channels (filter_length // 2 + 1) only sizes the posterior encoder's input, the training spectrogram;
    # inference never builds enc_q, so an unusual value (Applio uses 1024 at 32 kHz and 2048 at 40/48 kHz, but
    # a model trained with another STFT still infers correctly) is no error. Only a file that still holds
    # enc_q can contradict it: Conv1d(spec_channels -> hidden, 1).
    shape = w.get("enc_q.pre.weight", 3)
    if shape is None or shape[1] == cfg.spec_channels:
        return None
    return (f"config spec_channels={cfg.spec_channels} but {w.show('enc_q.pre.weight')} implies {shape[1]} "
            f"(filter_length {2 * (shape[1] - 1)})")


def _expected(cfg: SynthConfig) -> dict[str, tuple[int, ...]]:
    """Key -> torch-layout shape of the model this port builds from `cfg`: the weights will be loaded into
    that model, so it is the reference here rather than a second table of shapes."""
    from rvc_mlx.checkpoints import _transform_for, expected_shapes
    from rvc_mlx.synthesizer.model import SynthesizerModel

    model = SynthesizerModel(cfg)
    modules = dict(model.named_modules())
    out = {}
    for key, shape in expected_shapes(model).items():
        path, _, param = key.rpartition(".")
        perm = _transform_for(modules.get(path), param)  # MLX axis i is torch axis perm[i]
        torch_shape = list(shape)
        for i, p in enumerate(perm or ()):
            torch_shape[p] = shape[i]
        out[key] = tuple(torch_shape)
    return out


def _leftovers(cfg: SynthConfig, w: _Weights) -> str | None:
    from rvc_mlx.checkpoints import training_only

    expected = _expected(cfg)
    given = {k: s for k, s in w.shape.items() if not training_only(k)}
    unexpected = sorted(w.name[k] for k in set(given) - set(expected))
    missing = sorted(set(expected) - set(given))
    wrong = [f"{w.show(k)} for {expected[k]}" for k in sorted(set(given) & set(expected)) if given[k] != expected[k]]
    for key, (g_key, g_shape) in sorted(w.gain.items()):
        if training_only(key):
            continue
        if key not in w.shape:
            missing.append(f"{key}_v")
        elif g_shape != (w.shape[key][0],) + (1,) * (len(w.shape[key]) - 1):
            wrong.append(f"{g_key} {g_shape} for {w.shape[key][:1] + (1,) * (len(w.shape[key]) - 1)}")
    unpaired = [f"{k}_g" for k, name in w.name.items() if name != k and k not in w.gain and not training_only(k)]
    missing += sorted(unpaired)
    parts = []
    for label, items in (("unexpected", unexpected), ("missing", missing), ("of another shape", wrong)):
        if items:
            more = f", ... (+{len(items) - 3} more)" if len(items) > 3 else ""
            parts.append(f"{len(items)} {label} ({', '.join(items[:3])}{more})")
    if not parts:
        return None
    return f"the weights do not match the model the config describes ({cfg.variant}): " + "; ".join(parts)


# In this order so that the first failure names the root cause: checkpoint flags change the set of keys, the
# upsampling decides the output rate, widths and counts come next, and only what no field explains is listed.
_CHECKS = (_f0, _version, _upsample_rates, _sr, _widths, _attention, _upsample_kernels, _resblocks, _spec_channels,
           _leftovers)


def validate_rvc(cfg: SynthConfig, state: dict[str, np.ndarray], source: str) -> None:
    """Raise ConfigError (one line, prefixed by `source`) if `cfg` disagrees with itself or with `state`, the
    checkpoint's `weight` dict in torch layout before weight-norm folding (enc_q.* allowed and used)."""
    weights = _Weights(state)
    for check in _CHECKS:
        problem = check(cfg, weights)
        if problem:
            raise ConfigError(f"{source}: {problem}")
