"""Deterministic synthetic checkpoints in the original file formats, with trained-like statistics.

Weights come from numpy's PCG64 (never torch's RNG): fan-in-scaled (He for layers followed by ReLU),
BatchNorm gains/biases away from 1/0, and BatchNorm running statistics calibrated on a fixed synthetic signal
so activations keep a sane scale through the network, then perturbed and rounded to 3 significant digits
(so the file does not depend on the last bits of the calibration arithmetic). Files are cached, never committed.

Commands: python -m rvc_mlx.testing.synthetic rmvpe --seed 0 -o rmvpe.pt
          python -m rvc_mlx.testing.synthetic contentvec --seed 0 -o contentvec/   (config.json + pytorch_model.bin)
"""

from __future__ import annotations

import argparse
import fcntl
import io
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from rvc_mlx.checkpoints import cache_dir, state_sha256
from rvc_mlx.outputs import atomic_write_bytes

GENERATOR_VERSION = 2


def _round_sig(x: np.ndarray, digits: int = 3) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    nz = x != 0
    mag = 10.0 ** (digits - 1 - np.floor(np.log10(np.abs(x[nz]))))
    out[nz] = np.round(x[nz] * mag) / mag
    return out


def calibration_audio(rng: np.random.Generator, seconds: float = 1.0, sr: int = 16000) -> np.ndarray:
    """A voiced-like signal (gliding harmonics + noise) used only to calibrate normalisation statistics."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 140.0 * 2 ** (np.sin(2 * np.pi * 1.3 * t) * 0.5)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    x = 0.3 * x / np.max(np.abs(x)) + 0.01 * rng.standard_normal(n)
    return x.astype(np.float32)


# ----------------------------------------------------------------------------------------------- RMVPE
def rmvpe_state(seed: int = 0) -> dict:
    """State dict (torch tensors, the original's key order) of a synthetic RMVPE `E2E(4, 1, (2, 2))`."""
    import torch

    from reference_torch.rmvpe import E2E

    rng = np.random.Generator(np.random.PCG64(seed))
    model = E2E()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    state: dict[str, np.ndarray] = {}
    for key, shape in shapes.items():
        path, _, param = key.rpartition(".")
        module = modules[path]
        if param == "num_batches_tracked":
            state[key] = np.array(int(rng.integers(10_000, 200_000)), dtype=np.int64)
        elif isinstance(module, torch.nn.BatchNorm2d) and param in ("running_mean", "running_var"):
            state[key] = np.zeros(shape) if param == "running_mean" else np.ones(shape)  # calibrated below
        elif isinstance(module, torch.nn.BatchNorm2d):
            state[key] = rng.uniform(0.6, 1.4, shape) if param == "weight" else rng.normal(0.0, 0.1, shape)
        elif isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and param == "weight":
            if isinstance(module, torch.nn.ConvTranspose2d):  # (I, O, kh, kw); each output sees I*k*k/stride^2 taps
                fan_in = shape[0] * shape[2] * shape[3] / (module.stride[0] * module.stride[1])
            else:
                fan_in = shape[1] * shape[2] * shape[3]
            gain = 1.0 if path in ("cnn",) or path.endswith("shortcut") else 2.0  # He where ReLU follows
            state[key] = rng.normal(0.0, np.sqrt(gain / fan_in), shape)
        elif param.startswith(("weight_ih", "weight_hh", "bias_ih", "bias_hh")):
            bound = 1.0 / np.sqrt(shape[0] // 3)
            state[key] = rng.uniform(-bound, bound, shape)
        elif isinstance(module, torch.nn.Linear) and param == "weight":
            state[key] = rng.normal(0.0, 1.0 / np.sqrt(shape[1]), shape)
        elif param == "bias":
            state[key] = rng.normal(0.0, 0.05, shape)
        else:  # pragma: no cover - the E2E has no other parameter kinds
            raise AssertionError(f"no synthetic rule for {key}")
    tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.int64 if k.endswith("num_batches_tracked")
                                              else np.float32)) for k, v in state.items()}
    _calibrate_rmvpe(tensors, rng)
    # The released rmvpe.pt stores float16 tensors (181 MB for 90.4 M parameters); so does this one.
    return {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}


def _calibrate_rmvpe(tensors: dict, rng: np.random.Generator) -> None:
    """Set BN running stats from a float64 pass on a calibration signal, and the output bias so that about
    half of the frames cross RVC's 0.03 voicing threshold (so voicing decisions are exercised)."""
    import torch

    from reference_torch.rmvpe import E2E, RMVPE

    model = E2E()
    model.load_state_dict(tensors, strict=True)
    twin = RMVPE(model, dtype=torch.float64)
    handles = []
    for path, module in twin.model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            def pre_hook(mod, args, path=path):
                x = args[0]
                mean = x.mean(dim=(0, 2, 3)).numpy()
                var = x.var(dim=(0, 2, 3), unbiased=False).numpy()
                n = mean.shape[0]
                mean = _round_sig(mean + 0.1 * np.sqrt(var) * rng.standard_normal(n))
                var = _round_sig(var * np.exp(0.2 * rng.standard_normal(n)) + 1e-4)
                mod.running_mean.copy_(torch.from_numpy(mean))
                mod.running_var.copy_(torch.from_numpy(var))
                tensors[f"{path}.running_mean"].copy_(torch.from_numpy(mean))
                tensors[f"{path}.running_var"].copy_(torch.from_numpy(var))
            handles.append(module.register_forward_pre_hook(pre_hook))
    logits = {}
    handles.append(twin.model.fc[1].register_forward_hook(lambda m, a, o: logits.setdefault("z", o)))
    twin.salience(calibration_audio(rng))
    for h in handles:
        h.remove()
    z = logits["z"][0].numpy() - tensors["fc.1.bias"].double().numpy()
    bias = rng.normal(0.0, 0.3, z.shape[1])
    logit_thr = np.log(0.03 / 0.97)
    shift = _round_sig(logit_thr - np.median(np.max(z + bias, axis=1)))
    tensors["fc.1.bias"].copy_(torch.from_numpy((bias + shift).astype(np.float32)))


def _legacy_weight_norm_key(key: str) -> str:
    """parametrizations.weight.original0/1 -> weight_g/weight_v: the spelling the released files use."""
    return key.replace(".parametrizations.weight.original0", ".weight_g").replace(
        ".parametrizations.weight.original1", ".weight_v")


# ----------------------------------------------------------------------------------------------- ContentVec
def contentvec_state(seed: int = 0) -> dict:
    """State dict of a synthetic ContentVec (`HubertModelWithFinalProj`, 94.6 M parameters) with the legacy
    `weight_g/weight_v` spelling of the real file; LayerNorm/GroupNorm gains != 1 and weight-norm g != ||v||."""
    import torch

    from reference_torch.hubert import HubertModel

    rng = np.random.Generator(np.random.PCG64(seed))
    model = HubertModel()
    modules = dict(model.named_modules())
    state = {}
    for key, value in model.state_dict().items():
        shape = tuple(value.shape)
        key = _legacy_weight_norm_key(key)
        path, _, param = key.rpartition(".")
        module = modules.get(path)
        if key == "masked_spec_embed":
            a = rng.uniform(0.0, 1.0, shape)
        elif param == "weight_g":  # per kernel tap; ||v_k|| ~ 192 for unit-normal v, so g != ||v||
            a = 2.5 * rng.uniform(0.7, 1.3, shape)
        elif param == "weight_v":
            a = rng.standard_normal(shape)
        elif isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
            a = rng.uniform(0.7, 1.3, shape) if param == "weight" else rng.normal(0.0, 0.05, shape)
        elif isinstance(module, torch.nn.Conv1d) and param == "weight":  # GELU follows: He scaling
            a = rng.normal(0.0, np.sqrt(2.0 / (shape[1] * shape[2])), shape)
        elif isinstance(module, torch.nn.Linear) and param == "weight":
            gain = 2.0 if path.endswith("intermediate_dense") else 1.0
            a = rng.normal(0.0, np.sqrt(gain / shape[1]), shape)
        elif param == "bias":
            a = rng.normal(0.0, 0.02, shape)
        else:  # pragma: no cover - HubertModel has no other parameter kinds
            raise AssertionError(f"no synthetic rule for {key}")
        state[key] = torch.from_numpy(np.asarray(a, dtype=np.float32))
    return state


def _write_contentvec(path: Path, seed: int) -> str:
    import json

    import torch

    from rvc_common.config import HUBERT

    state = contentvec_state(seed)
    path.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path / "pytorch_model.bin", buf.getvalue())
    atomic_write_bytes(path / "config.json", (json.dumps(HUBERT.to_hf(), indent=2) + "\n").encode())
    return state_sha256({k: v.numpy() for k, v in state.items()})


# ----------------------------------------------------------------------------------------------- RVC .pth
def synth_checkpoint(variant: str, seed: int = 0) -> dict:
    """An RVC model .pth dict for `variant` (e.g. "v2-40k-f0") in Applio's format: fp16 `weight` without
    enc_q, legacy weight_g/weight_v names, the 18-item config and the metadata fields."""
    import torch

    from reference_torch.synthesizer.model import SynthesizerModel
    from rvc_common.config import synth_variants

    cfg = synth_variants()[variant]
    rng = np.random.Generator(np.random.PCG64(seed))
    model = SynthesizerModel(cfg)
    modules = dict(model.named_modules())
    weight = {}
    for key, value in model.state_dict().items():
        shape = tuple(value.shape)
        key = _legacy_weight_norm_key(key)
        path, _, param = key.rpartition(".")
        module = modules.get(path)
        if param == "weight_v":
            a = rng.standard_normal(shape)
        elif param == "weight_g":  # filled below, once its v exists
            a = None
        elif param in ("gamma", "beta"):
            a = rng.uniform(0.7, 1.3, shape) if param == "gamma" else rng.normal(0.0, 0.05, shape)
        elif param.startswith("emb_rel"):
            a = rng.normal(0.0, shape[-1] ** -0.5, shape)
        elif isinstance(module, torch.nn.Embedding):
            a = rng.normal(0.0, 1.0 if path != "emb_g" else 0.3, shape)
        elif param == "weight":
            gain = 0.1 if path == "dec.conv_post" else 1.0  # keeps the final tanh mostly out of saturation
            a = rng.normal(0.0, gain / np.sqrt(np.prod(shape[1:])), shape)
        elif param == "bias":
            a = rng.normal(0.0, 0.02, shape)
        else:  # pragma: no cover
            raise AssertionError(f"no synthetic rule for {key}")
        weight[key] = a
    for key in [k for k in weight if k.endswith(".weight_g")]:
        # w = g v / ||v|| has per-channel norm g: ~1 keeps fan-in scale (||v|| ~ sqrt(fan_in), so g != ||v||);
        # a transposed conv of stride u spreads each input over u outputs, hence sqrt(u / 2) there
        shape = (weight[key[:-1] + "v"].shape[0],) + (1,) * (weight[key[:-1] + "v"].ndim - 1)
        scale = np.sqrt(modules[key[: -len(".weight_g")]].stride[0] / 2) if key.startswith("dec.ups") else 1.0
        weight[key] = scale * rng.uniform(0.6, 1.4, shape)
    ckpt = {
        "weight": {k: torch.from_numpy(np.asarray(v, dtype=np.float32)).half() for k, v in weight.items()},
        "config": cfg.to_list(), "epoch": 100, "step": 12345, "sr": cfg.sr, "f0": int(cfg.use_f0),
        "version": cfg.version, "creation_date": "2026-01-01T00:00:00", "model_hash": "synthetic",
        "overtrain_info": "None", "dataset_length": 0, "model_name": f"synthetic-{variant}", "author": "rvc-mlx",
        "embedder_model": "contentvec", "speakers_id": 0, "vocoder": cfg.vocoder,
    }
    return ckpt


def _write_file(state_fn):
    def write(path: Path, seed: int) -> str:
        import torch

        state = state_fn(seed)
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(Path(path), buf.getvalue())
        return state_sha256({k: v.numpy() for k, v in state.items()})

    return write


def _write_synth(variant: str):
    def write(path: Path, seed: int) -> str:
        import torch

        ckpt = synth_checkpoint(variant, seed)
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        atomic_write_bytes(Path(path), buf.getvalue())
        return state_sha256({k: v.numpy() for k, v in ckpt["weight"].items()})

    return write


def _synth_generators() -> dict:
    from rvc_common.config import synth_variants

    return {f"synth-{v}": (_write_synth(v), f"synth-{v}-seed{{seed}}-v{{v}}.pth") for v in synth_variants()}


# component -> (writer(path, seed) -> content sha256, cached name)
GENERATORS = {
    "rmvpe": (_write_file(rmvpe_state), "rmvpe-seed{seed}-v{v}.pt"),
    "contentvec": (_write_contentvec, "contentvec-seed{seed}-v{v}"),
    **_synth_generators(),
}


def write_checkpoint(component: str, path: Path, seed: int = 0) -> str:
    """Write the synthetic checkpoint (file or directory) for `component`; returns its content hash."""
    return GENERATORS[component][0](Path(path), seed)


def cached_checkpoint(component: str, seed: int = 0) -> Path:
    """The synthetic checkpoint for `component`, generated on first use into the cache directory."""
    path = cache_dir() / "synthetic" / GENERATORS[component][1].format(seed=seed, v=GENERATOR_VERSION)
    if path.exists():
        return path
    # parallel test workers often want the same checkpoint at once: one generates it, the others wait for it
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f"{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            # a temp name of this process's own, renamed when complete (a killed generator leaves no checkpoint)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
            write_checkpoint(component, tmp, seed)
            try:
                tmp.rename(path)  # a directory appears complete or not at all
            except OSError:  # another process's rename won (one that does not take the lock: an older version)
                if not path.exists():
                    raise
            if tmp.exists():
                shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rvc_mlx.testing.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("component", choices=sorted(GENERATORS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", type=Path, required=True)
    a = p.parse_args(argv)
    digest = write_checkpoint(a.component, a.output, a.seed)
    print(f"wrote {a.output} ({a.component}, seed {a.seed}, content sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
