"""Safe loading of original checkpoints and conversion to MLX safetensors.

Original `.pt`/`.pth` files are read with `torch.load(weights_only=True)` only (no arbitrary unpickling), so
torch is needed to convert but never to run. Conversion is a per-tensor layout transform chosen by the MLX
module class at the key's path (module paths equal checkpoint prefixes, nothing is renamed), plus dropping
training-only keys. Loading is strict: missing or unexpected keys are an error that lists them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from rvc_mlx.outputs import atomic_write_bytes, remove_orphans, safetensors_bytes

FORMAT = "rvc-mlx/1"
# Keys that only matter for training: BatchNorm counters, HuBERT's SpecAugment vector, RVC's posterior encoder.
TRAINING_ONLY_SUFFIXES = ("num_batches_tracked", "masked_spec_embed")
TRAINING_ONLY_PREFIXES = ("enc_q.",)


def training_only(key: str) -> bool:
    return key.endswith(TRAINING_ONLY_SUFFIXES) or key.startswith(TRAINING_ONLY_PREFIXES)


class CheckpointError(ValueError):
    """A checkpoint is unreadable, of the wrong kind, or does not match the model."""


def cache_dir() -> Path:
    """Where converted weights and synthetic checkpoints live: $RVC_MLX_CACHE or ~/.cache/rvc-mlx."""
    root = os.environ.get("RVC_MLX_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rvc-mlx"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_sha256(state: dict[str, np.ndarray]) -> str:
    """Hash of a state dict's content (names, dtypes, shapes, bytes) independent of the file container."""
    h = hashlib.sha256()
    for key in sorted(state):
        a = np.ascontiguousarray(state[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise CheckpointError(
            "reading original .pt/.pth checkpoints needs PyTorch (torch.load with weights_only=True): "
            "`pip install torch`, or pass an already converted .safetensors file"
        ) from None
    return torch


def load_torch_checkpoint(path: str | Path) -> object:
    """`torch.load(weights_only=True)`: tensors and plain containers only; anything else is refused."""
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for code objects, RuntimeError for a damaged zip
        raise CheckpointError(f"{path}: not a loadable weights-only checkpoint ({_load_failure(e)})") from None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch colours its messages on a terminal


def _load_failure(e: Exception) -> str:
    """Why torch.load(weights_only=True) refused a file, in a few words."""
    glob = re.search(r"GLOBAL ([\w.]+)", _ANSI.sub("", str(e)))
    if glob:
        return f"it references {glob.group(1)}, which is code, not weights; refusing to unpickle it"
    return error_line(e)


def error_line(e: Exception) -> str:
    """The first line of an error, without colour codes or torch's advice to retry with weights_only=False (the
    one thing a user must not do with an untrusted file); the error's type when nothing is left."""
    text = _ANSI.sub("", str(e))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not re.search(
        r"weights_only|Weights only load failed|documentation of torch.load", ln, re.IGNORECASE)]
    return lines[0] if lines else type(e).__name__


def tensors_to_numpy(state: dict, path: str | Path, what: str) -> dict[str, np.ndarray]:
    torch = _torch()
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a plain state dict of tensors for {what}")
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


# --------------------------------------------------------------------------------------------- weight norm
_PARAMETRIZED = {".parametrizations.weight.original0": ".weight_g", ".parametrizations.weight.original1": ".weight_v"}


def fold_weight_norm(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Replace every (weight_g, weight_v) pair by `weight = g * v / ||v||` computed in float64.

    Accepts legacy `weight_g/weight_v` and `parametrizations.weight.original0/1` spellings. The norm runs over
    all axes but `dim`, and `dim` is the axis where g is not 1 (dim=0: g (O,1,1); HuBERT's pos conv dim=2:
    g (1,1,K)); an all-ones g means a full norm either way.
    """
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        for old, new in _PARAMETRIZED.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
        out[key] = value
    for g_key in [k for k in out if k.endswith(".weight_g")]:
        prefix = g_key[: -len("_g")]
        v_key = prefix + "_v"
        if v_key not in out:
            continue  # left for the strict key check to report
        g = np.asarray(out.pop(g_key), dtype=np.float64)
        v = np.asarray(out.pop(v_key), dtype=np.float64)
        if g.ndim != v.ndim:
            raise CheckpointError(f"{g_key}: shape {g.shape} does not broadcast against {v_key} {v.shape}")
        big = [i for i, n in enumerate(g.shape) if n != 1]
        if len(big) > 1 or (big and g.shape[big[0]] != v.shape[big[0]]):
            raise CheckpointError(f"{g_key}: shape {g.shape} is not a weight-norm gain for {v_key} {v.shape}")
        dim = big[0] if big else 0
        axes = tuple(i for i in range(v.ndim) if i != dim)
        out[prefix] = (g * v / np.sqrt(np.sum(v * v, axis=axes, keepdims=True))).astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------- layouts
def _transform_for(module: object, param: str):
    """torch -> MLX layout of one parameter, chosen by the MLX module class that owns it."""
    from rvc_mlx.runtime import nn

    if param != "weight":
        return None
    if isinstance(module, nn.Conv2d):
        return (0, 2, 3, 1)  # (O, I, KH, KW) -> (O, KH, KW, I)
    if isinstance(module, nn.ConvTranspose2d):
        return (1, 2, 3, 0)  # (I, O, KH, KW) -> (O, KH, KW, I)
    if isinstance(module, nn.Conv1d):
        return (0, 2, 1)  # (O, I, K) -> (O, K, I)
    if isinstance(module, nn.ConvTranspose1d):
        return (1, 2, 0)  # (I, O, K) -> (O, K, I)
    return None


def _key_list(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def expected_shapes(model) -> dict[str, tuple[int, ...]]:
    from mlx.utils import tree_flatten

    return {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}


def check_keys(expected: Iterable[str], given: Iterable[str], model, source: str) -> None:
    """Strict key match; the error lists every missing and unexpected key (abridged past 12)."""
    missing, unexpected = set(expected) - set(given), set(given) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_key_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_key_list(unexpected)}")
        raise CheckpointError(f"{source}: does not match {type(model).__name__}: " + "; ".join(parts))


def convert_state(state: dict[str, np.ndarray], model, source: str) -> dict[str, np.ndarray]:
    """Strictly map a torch state dict onto `model`'s parameters with layout transforms; float32 out."""
    expected = expected_shapes(model)
    given = {k: v for k, v in fold_weight_norm(state).items() if not training_only(k)}
    check_keys(expected, given, model, source)
    modules = dict(model.named_modules())
    out = {}
    for key, value in given.items():
        path, _, param = key.rpartition(".")
        perm = _transform_for(modules.get(path), param)
        arr = np.asarray(value, dtype=np.float32)
        if perm is not None:
            if arr.ndim != len(perm):
                raise CheckpointError(f"{source}: {key} has shape {arr.shape}, expected rank {len(perm)}")
            arr = np.transpose(arr, perm)
        if tuple(arr.shape) != expected[key]:
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(arr.shape)} after conversion, model expects {expected[key]}"
            )
        out[key] = np.ascontiguousarray(arr)
    return out


def save_mlx_weights(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write MLX safetensors atomically (temp file + fsync + rename), with the content hash of the arrays;
    the same conversion gives the same bytes."""
    meta = {"format": FORMAT, **metadata, "sha256": state_sha256(arrays)}
    atomic_write_bytes(path, safetensors_bytes(arrays, meta))


def read_mlx_metadata(path: Path, component: str) -> dict[str, str]:
    """Metadata of a converted file; refuses files that are not rvc-mlx weights for `component`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error_line(e)})") from None
    if meta.get("format") != FORMAT or meta.get("component") != component:
        raise CheckpointError(
            f"{path}: holds {meta.get('component') or 'unknown'} weights (format {meta.get('format')}), "
            f"not {component}; convert the original checkpoint with `rvc-mlx convert-weights {component} FILE`"
        )
    return meta


# (path, inode, size, mtime) -> sha256 already checked in this process, so a file is hashed once per run
_VERIFIED: dict[tuple, str] = {}


def _identity(path: Path) -> tuple:
    st = path.stat()
    return str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns


def read_mlx_weights(path: Path, component: str) -> dict[str, np.ndarray]:
    """The arrays of a converted file, verified against the content hash it records (files converted before
    hashes were recorded are read as they are)."""
    from safetensors.numpy import load_file

    meta = read_mlx_metadata(path, component)
    try:
        arrays = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error_line(e)})") from None
    want = meta.get("sha256")
    if want is not None and _VERIFIED.get(_identity(path)) != want:
        if state_sha256(arrays) != want:
            raise CheckpointError(f"{path}: the weights do not match the sha256 recorded in the file (damaged); "
                                  "convert the original checkpoint again")
        _VERIFIED[_identity(path)] = want
    return arrays


def notice(message: str) -> None:
    """A one-line notice on stderr for something fixed on the way (a damaged cache entry rebuilt)."""
    print(f"rvc-mlx: {message}", file=sys.stderr, flush=True)


def _cache_problem(entry: Path, component: str, source_sha: str) -> str | None:
    """Why a cache entry cannot be used as it is (None: it is sound)."""
    try:
        meta = read_mlx_metadata(entry, component)
        if meta.get("source_sha256") != source_sha:
            return "was converted from another file"
        if "sha256" not in meta:
            return "predates content hashes"
        read_mlx_weights(entry, component)
    except CheckpointError as e:
        return "is damaged: " + str(e).split(": ", 1)[-1]
    return None


def converted_path(source: Path, component: str, source_sha: str | None = None) -> Path:
    """The cache entry for `source` converted for `component` (named by the source's content hash)."""
    return cache_dir() / "converted" / f"{component}-{(source_sha or file_sha256(source))[:20]}.safetensors"


def converted(source: str | Path, component: str, build: Callable[[], tuple[dict, dict]],
              out: Path | None = None) -> Path:
    """The MLX safetensors converted from `source` by `build() -> (arrays, metadata)`.

    With `out`, always converted and written there (the old file is replaced only once the new one is complete).
    Otherwise the cache entry named by the source's content hash: verified (source hash and its own content hash),
    rebuilt once with a notice when it is damaged or stale; orphan temp files of killed runs are removed."""
    source = Path(source)
    source_sha = file_sha256(source)
    if out is not None:
        arrays, meta = build()
        save_mlx_weights(out, arrays, {**meta, "source": source.name, "source_sha256": source_sha})
        return out
    entry = converted_path(source, component, source_sha)
    remove_orphans(entry.parent)
    if entry.exists():
        why = _cache_problem(entry, component, source_sha)
        if why is None:
            return entry
        notice(f"cached {component} weights {entry.name} {why}; converting {source} again")
    arrays, meta = build()
    save_mlx_weights(entry, arrays, {**meta, "source": source.name, "source_sha256": source_sha})
    why = _cache_problem(entry, component, source_sha)
    if why is not None:
        raise CheckpointError(f"{entry}: the entry just written {why}; check the disk holding {entry.parent}")
    return entry


def mlx_weight_shape(path: Path, component: str, key: str) -> tuple[int, ...] | None:
    """One tensor's shape in a converted file, read from the header alone (None when absent)."""
    from safetensors import safe_open

    read_mlx_metadata(path, component)
    with safe_open(str(path), framework="numpy") as f:
        return tuple(f.get_slice(key).get_shape()) if key in f.keys() else None


def read_contentvec_dir(path: str | Path, read: bool = True):
    """A ContentVec directory: config.json + model.safetensors (read without torch) or pytorch_model.bin
    (weights_only) -> (HubertConfig, state dict of numpy arrays or None unless `read`, weights file)."""
    from rvc_common.config import ConfigError, HubertConfig

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: not a ContentVec directory (no config.json)")
    try:
        cfg = HubertConfig.from_hf(json.loads(cfg_file.read_text()), str(cfg_file))
    except (json.JSONDecodeError, ConfigError) as e:
        raise CheckpointError(str(e) if isinstance(e, ConfigError) else f"{cfg_file}: not valid JSON ({e})") from None
    if not read:
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return cfg, None, path / name
    if (path / "model.safetensors").is_file():
        from safetensors.numpy import load_file

        try:
            state = load_file(str(path / "model.safetensors"))
        except Exception as e:
            raise CheckpointError(f"{path / 'model.safetensors'}: not a readable safetensors file ({e})") from None
        weights = path / "model.safetensors"
    elif (path / "pytorch_model.bin").is_file():
        weights = path / "pytorch_model.bin"
        state = tensors_to_numpy(load_torch_checkpoint(weights), weights, "HuBERT")
    else:
        raise CheckpointError(f"{path}: has neither model.safetensors nor pytorch_model.bin")
    return cfg, state, weights


def convert_contentvec(path: str | Path, out: Path | None = None) -> Path:
    """Convert a ContentVec directory or a fairseq `hubert_base.pt` to MLX safetensors (config in the metadata;
    `final_proj` kept when the checkpoint has one); cached by content hash."""
    from rvc_mlx.hubert import HubertModel

    path = Path(path)
    if path.is_dir():
        weights = read_contentvec_dir(path, read=False)[2]
    elif path.is_file():
        weights = path
    else:
        raise CheckpointError(f"{path}: no such ContentVec directory or HuBERT checkpoint")

    def build():
        if path.is_dir():
            cfg, state, _ = read_contentvec_dir(path)
        else:
            from rvc_mlx.fairseq import read_fairseq_hubert

            cfg, state = read_fairseq_hubert(path)
        model = HubertModel(cfg, final_proj="final_proj.weight" in state)
        return convert_state(state, model, str(path)), {"component": "hubert", "config": json.dumps(cfg.to_hf())}

    return converted(weights, "hubert", build, out)


def convert_checkpoint(source: str | Path, component: str, model, out: Path | None = None,
                       read_state=None) -> Path:
    """Convert an original checkpoint for `component` into MLX safetensors (cached by content hash, or `out`).

    `model` is the MLX module, or a function of the state dict that builds it (CREPE: width read from conv1).
    `read_state(raw, source) -> {key: ndarray}` unwraps formats that are not a plain state dict."""
    source = Path(source)

    def build():
        raw = load_torch_checkpoint(source)
        state = read_state(raw, source) if read_state is not None else tensors_to_numpy(raw, source, component)
        module = model if callable(getattr(model, "parameters", None)) else model(state)
        return convert_state(state, module, str(source)), {"component": component}

    if not source.is_file():
        raise CheckpointError(f"{source}: no such checkpoint file")
    return converted(source, component, build, out)


def load_mlx_weights(model, path: str | Path, component: str, read_state=None) -> None:
    """Load weights into `model` from an original checkpoint (converted once) or converted safetensors."""
    from rvc_mlx.runtime import mx

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix != ".safetensors":
        path = convert_checkpoint(path, component, model, read_state=read_state)
    arrays = read_mlx_weights(path, component)
    expected = expected_shapes(model)
    check_keys(expected, arrays, model, str(path))
    for k, v in arrays.items():
        if tuple(v.shape) != expected[k]:
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, model expects {expected[k]}")
    model.load_weights([(k, mx.array(v)) for k, v in arrays.items()], strict=True)


def read_rvc_checkpoint(path: str | Path):
    """An RVC model `.pth` (weights_only) -> (SynthConfig, state dict of numpy arrays without enc_q.*).

    The config is validated against every tensor it shapes (rvc_mlx.synthesizer.validate); the original reader
    overwrites config[-3] (spk_embed_dim) with emb_g's row count, here any disagreement is refused as invalid,
    since it means the config list and the weights come from different models.
    """
    from rvc_common.config import ConfigError, SynthConfig
    from rvc_mlx.synthesizer.validate import validate_rvc

    path = Path(path)
    ckpt = load_torch_checkpoint(path)
    if not isinstance(ckpt, dict) or "weight" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not an RVC model (expected a dict with 'weight' and 'config')")
    state = tensors_to_numpy(ckpt["weight"], path, "RVC model")
    try:
        cfg = SynthConfig.from_list(ckpt["config"], use_f0=bool(int(ckpt.get("f0", 1))),
                                    version=str(ckpt.get("version", "v1")),
                                    vocoder=str(ckpt.get("vocoder", "HiFi-GAN")), source=str(path))
        validate_rvc(cfg, state, str(path))  # enc_q.* still in: it tells spec_channels when present
    except ConfigError as e:
        raise CheckpointError(f"{path}: invalid RVC model: {str(e).removeprefix(f'{path}: ')}") from None
    return cfg, {k: v for k, v in state.items() if not training_only(k)}


def convert_rvc_model(path: str | Path, out: Path | None = None) -> Path:
    """Convert an RVC `.pth` (fp16 weights, weight norm folded in float64) to MLX safetensors; cached."""
    from rvc_mlx.synthesizer.model import SynthesizerModel

    path = Path(path)

    def build():
        cfg, state = read_rvc_checkpoint(path)
        arrays = convert_state(state, SynthesizerModel(cfg), str(path))
        meta = {"config": cfg.to_list(), "f0": cfg.use_f0, "version": cfg.version, "vocoder": cfg.vocoder}
        return arrays, {"component": "synthesizer", "config": json.dumps(meta)}

    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return converted(path, "synthesizer", build, out)


# --------------------------------------------------------------------------------------------- FCPE
# config_dict entries the port hard-codes; any other value means a different model or front end.
_EXPECTED = {
    "mel": {"sr": 16000, "num_mels": 128, "n_fft": 1024, "win_size": 1024, "hop_size": 160, "fmin": 0, "fmax": 8000},
    "model": {"type": "CFNaiveMelPE", "out_dims": 360, "hidden_dims": 512, "n_layers": 6, "conv_only": True},
}


def check_fcpe_checkpoint(raw: object, source: str | Path) -> dict:
    """The state dict of a torchfcpe checkpoint {global_step, model, config_dict}, or CheckpointError."""
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict) or "config_dict" not in raw:
        raise CheckpointError(f"{source}: not an FCPE checkpoint (expected a dict with 'model' and 'config_dict', "
                              "like torchfcpe's assets/fcpe_c_v001.pt)")
    config = raw["config_dict"]
    for section, values in _EXPECTED.items():
        got = (config.get(section) or {}) if isinstance(config, dict) else {}
        for key, want in values.items():
            if got.get(key) != want:
                raise CheckpointError(f"{source}: FCPE config {section}.{key} is {got.get(key)!r}; this port "
                                      f"implements {want!r} only (torchfcpe's bundled fcpe_c_v001.pt)")
    return raw["model"]
