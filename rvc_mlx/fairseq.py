"""Safe reading of fairseq HuBERT checkpoints (the original RVC WebUI's `hubert_base.pt`, ContentVec legacy).

Such a file is a torch zip pickle holding fairseq's training state next to the weights: `args`
(argparse.Namespace or None), `cfg` (a dict or an omegaconf DictConfig), `model` (the state dict),
`optimizer_history`, `task_state` (fairseq Dictionary objects), `extra_state`. It is read with torch's
weights-only unpickler, to which the few config classes fairseq pickles are registered, under their pickled
names, as inert stand-ins that only keep the pickled data: no fairseq/omegaconf code runs (neither needs to be
installed) and any other global is refused by name. The weights are renamed to the HF `HubertModel` names this
port uses, training-only tensors are dropped, and a HubertConfig is derived from the checkpoint's own cfg/args.
"""

from __future__ import annotations

import ast
import io
import pickletools
import re
import threading
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from pathlib import Path

import numpy as np

from rvc_common.config import ConfigError, HubertConfig
from rvc_mlx.checkpoints import CheckpointError, _key_list, _torch, error_line


# --------------------------------------------------------------------------------------------- stand-ins
class Inert:
    """Stand-in for one pickled config object: keeps its constructor arguments and pickled state as data."""

    # __slots__ without __dict__: a pickled state cannot plant attributes (e.g. a `__setstate__` that torch's
    # unpickler would then call); BUILD reaches only the __setstate__ below.
    __slots__ = ("args", "state")
    KIND = "opaque"
    GLOBAL = ""

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self.args, self.state = args, None
        return self

    def __init__(self, *args, **kwargs):  # REDUCE calls the class: nothing to do beyond __new__
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.GLOBAL}>"


class TypeName:
    """Stand-in for a type that omegaconf pickles as metadata (ref/key/element types); not callable."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<type {self.name}>"


def _as_dict(*args) -> dict:
    """Stand-in for collections.defaultdict (omegaconf's resolver cache): a plain dict, no default factory."""
    return {}


def _stand_in(name: str, kind: str) -> type:
    return type(name.rpartition(".")[2], (Inert,), {"__slots__": (), "KIND": kind, "GLOBAL": name})


# kind: namespace = attributes in a state dict; mapping/sequence = omegaconf containers (`_content`);
# value = omegaconf value nodes (`_val`); opaque = kept but never read (vocabularies, node metadata)
_CLASSES = {
    "argparse.Namespace": "namespace",
    "fairseq.data.dictionary.Dictionary": "opaque",
    "omegaconf.dictconfig.DictConfig": "mapping",
    "omegaconf.listconfig.ListConfig": "sequence",
    "omegaconf.base.ContainerMetadata": "opaque",
    "omegaconf.base.Metadata": "opaque",
    **{f"omegaconf.nodes.{n}": "value"
       for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "EnumNode", "ValueNode")},
}
_TYPES = ("typing.Any", "typing.Dict", "typing.List", "builtins.dict", "builtins.list", "builtins.int",
          "builtins.str", "builtins.float", "builtins.bool", "builtins.object")
STAND_INS: dict[str, object] = {
    **{name: _stand_in(name, kind) for name, kind in _CLASSES.items()},
    **{name: TypeName(name) for name in _TYPES},
    "collections.defaultdict": _as_dict,
}
# torch's safe-globals registry is process-wide; one load at a time keeps another load's exit from
# unregistering the stand-ins in the middle of ours
_LOCK = threading.Lock()


def _plain(obj: object, depth: int = 0) -> object:
    """Stand-ins -> plain dicts/lists/values (omegaconf containers by their `_content`)."""
    if depth > 64:
        raise ValueError("config nested deeper than 64 levels")
    if isinstance(obj, dict):
        return {k: _plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v, depth + 1) for v in obj)
    if not isinstance(obj, Inert):
        return obj.name if isinstance(obj, TypeName) else obj
    state = obj.state if isinstance(obj.state, dict) else {}
    if obj.KIND == "namespace":
        return _plain(state, depth + 1)
    if obj.KIND in ("mapping", "sequence"):
        return _plain(state.get("_content"), depth + 1)  # None, "???" or "${...}" stay as they are
    if obj.KIND == "value":
        return _plain(state.get("_val"), depth + 1)
    return obj


# --------------------------------------------------------------------------------------------- unpickling
def _globals_named(text: str) -> str | None:
    found = re.search(r"GLOBAL (\S+)", re.sub(r"\x1b\[[0-9;]*m", "", text))
    if not found:
        return None
    name = found.group(1)
    return name if "." in name else f"builtins.{name}"  # torch's message drops the builtins. prefix


def _py3_name(name: str) -> str:
    """A pickled global as Python 3 resolves it: protocol-2 pickles spell some modules the Python 2 way
    (subprocess as `commands`), and unpickling, torch's included, maps them back."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module, attr = ".".join(parts[:i]), ".".join(parts[i:])
        if (module, attr) in NAME_MAPPING:
            return ".".join(NAME_MAPPING[module, attr])
        if module in IMPORT_MAPPING:
            return f"{IMPORT_MAPPING[module]}.{attr}"
    return name


def _refuse(path: Path, names: list[str]) -> CheckpointError:
    shown = [_py3_name(n) + (f" (pickled as {n})" if _py3_name(n) != n else "") for n in sorted(names)]
    return CheckpointError(f"{path}: refusing to unpickle it: it references {', '.join(shown)}, which is code, "
                           "not weights or fairseq config data")


def _load(path: Path) -> object:
    """torch.load(weights_only=True) with the stand-ins registered; any other global is refused by name."""
    torch = _torch()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    allowed = [(obj, name) for name, obj in STAND_INS.items()]
    with _LOCK, torch.serialization.safe_globals(allowed):
        if zipfile.is_zipfile(path):
            # a static scan first, so that the refusal names every offending global with its module
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
            except Exception as e:
                raise CheckpointError(f"{path}: not a readable torch checkpoint ({error_line(e)})") from None
            if unsafe:
                raise _refuse(path, unsafe)
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError for globals or opcodes, RuntimeError for a damaged zip
            name = _globals_named(str(e))
            if name:
                raise _refuse(path, [name]) from None
            raise CheckpointError(f"{path}: not a loadable fairseq checkpoint ({error_line(e)})") from None


def _pickle_strings(path: Path) -> set[str]:
    """Every string constant of the checkpoint's object pickle, read as opcodes (nothing is unpickled)."""
    strings: set[str] = set()

    def scan(f) -> None:
        for op, arg, _ in pickletools.genops(f):
            if isinstance(arg, str) and "UNICODE" in op.name:
                strings.add(arg)

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            records = [n for n in z.namelist() if n.endswith("data.pkl")]
            if records:
                scan(io.BytesIO(z.read(records[0])))
    else:  # torch's legacy format: magic number, protocol, sys info, then the object, as separate pickles
        with open(path, "rb") as f:
            for _ in range(4):
                scan(f)
    return strings


def is_fairseq_checkpoint(path: str | Path) -> bool:
    """True for a torch checkpoint whose pickle has fairseq's top-level keys (model, optimizer_history and
    cfg or args); reads the pickle's opcodes only, never unpickles."""
    try:
        strings = _pickle_strings(Path(path))
    except Exception:
        return False
    return {"model", "optimizer_history"} <= strings and bool({"cfg", "args"} & strings)


# --------------------------------------------------------------------------------------------- names
_LAYER = r"encoder\.layers\.(\d+)\."
# fairseq name pattern -> HF HubertModel name; `default` extractor mode: Sequential(conv, dropout, GroupNorm
# on layer 0 only, GELU), so conv_layers.N.0 is the conv and conv_layers.0.2 the GroupNorm
_RENAMES = [
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"feature_extractor\.conv_layers\.0\.2\.(weight|bias)", r"feature_extractor.conv_layers.0.layer_norm.\1"),
    (r"layer_norm\.(weight|bias)", r"feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"feature_projection.projection.\1"),
    # weight_g/weight_v (or the parametrization spelling) stay unfolded: convert_state folds them (dim=2)
    (r"encoder\.pos_conv\.0\.(.+)", r"encoder.pos_conv_embed.conv.\1"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (_LAYER + r"self_attn\.(k_proj|v_proj|q_proj|out_proj)\.(weight|bias)", r"encoder.layers.\1.attention.\2.\3"),
    (_LAYER + r"self_attn_layer_norm\.(weight|bias)", r"encoder.layers.\1.layer_norm.\2"),
    (_LAYER + r"fc1\.(weight|bias)", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (_LAYER + r"fc2\.(weight|bias)", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (_LAYER + r"final_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
    (r"final_proj\.(weight|bias)", r"final_proj.\1"),
]
_RENAMES = [(re.compile(p), r) for p, r in _RENAMES]
# pre-training only: the mask embedding, the label embeddings the logits are scored against, target GLU
_TRAINING_ONLY = re.compile(r"mask_emb|label_embs_concat|target_glu\..+")


def hf_names(state: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """fairseq HuBERT parameter names -> HF HubertModel names; training-only tensors dropped, unknown refused."""
    out, unknown = {}, []
    for key, value in state.items():
        if _TRAINING_ONLY.fullmatch(key):
            continue
        for pattern, repl in _RENAMES:
            if pattern.fullmatch(key):
                out[pattern.sub(repl, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: parameters with no HF HubertModel counterpart: {_key_list(unknown)} "
                              "(not a HuBERT-base-style fairseq checkpoint)")
    return out


# --------------------------------------------------------------------------------------------- config
# fairseq fields whose other values describe an architecture HubertConfig does not represent
_REQUIRED = {"extractor_mode": "default", "layer_norm_first": False, "activation_fn": "gelu",
             "layer_type": "transformer", "pos_conv_depth": 1}
_DEFAULT_CONV = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"


def conv_feature_layers(spec: str) -> list[tuple[int, int, int]]:
    """fairseq's `conv_feature_layers` string, e.g. "[(512,10,5)] + [(512,3,2)] * 4", read without eval:
    only int tuples, lists, + and * are accepted."""

    def value(node: ast.AST):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Tuple):
            return tuple(value(e) for e in node.elts)
        if isinstance(node, ast.List):
            return [value(e) for e in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
                return left + right
            if isinstance(node.op, ast.Mult) and isinstance(left, list) and type(right) is int \
                    and 0 <= right and len(left) * right <= 64:  # chained products must not grow without bound
                return left * right
        raise ValueError(f"unexpected {ast.dump(node)[:40]}")

    if not isinstance(spec, str) or len(spec) > 1000:
        raise ValueError("not a short string")
    layers = value(ast.parse(spec, mode="eval").body)
    if not isinstance(layers, list) or not layers or not all(
            isinstance(t, tuple) and len(t) == 3 and all(type(v) is int and v > 0 for v in t) for t in layers):
        raise ValueError("not a list of (dim, kernel, stride) tuples")
    return layers


def _sections(ckpt: dict, source: str) -> tuple[dict, dict, str, str]:
    """(model fields, task fields, their names in messages) from `cfg` (fairseq >= 0.10) or `args` (older)."""
    try:
        cfg, args = _plain(ckpt.get("cfg")), _plain(ckpt.get("args"))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{source}: unreadable fairseq cfg/args ({e})") from None
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        task = cfg.get("task")
        return cfg["model"], task if isinstance(task, dict) else {}, "cfg.model", "cfg.task"
    if isinstance(args, dict):
        return args, args, "args", "args"
    raise CheckpointError(f"{source}: has neither a fairseq cfg with a model section nor args, so its "
                          "architecture is unknown")


def _field(section: dict, name: str, default, where: str, source: str):
    value = section.get(name, default)
    if type(value) is not type(default):  # bool is not accepted for int, nor an "${...}" interpolation
        raise CheckpointError(f"{source}: fairseq {where}.{name}={value!r} is not of type {type(default).__name__}")
    return value


def hubert_config(ckpt: dict, final_proj, source: str) -> HubertConfig:
    """The HubertConfig a fairseq HuBERT checkpoint describes; refuses, naming the field, what it can't represent."""
    model, task, m_where, t_where = _sections(ckpt, source)
    for name, want in _REQUIRED.items():
        if name in model and model[name] != want:
            raise CheckpointError(f"{source}: fairseq {m_where}.{name}={model[name]!r} is not supported "
                                  f"(this port implements RVC's HuBERT base: {name}={want!r})")
    if task.get("normalize", False) is not False:
        raise CheckpointError(f"{source}: fairseq {t_where}.normalize={task['normalize']!r} is not supported "
                              "(the model expects layer-normalised waveforms; RVC's HuBERT base has False)")
    rate = task.get("sample_rate", 16000)
    if rate != 16000:
        raise CheckpointError(f"{source}: fairseq {t_where}.sample_rate={rate!r} is not supported (16000 only)")
    spec = _field(model, "conv_feature_layers", _DEFAULT_CONV, m_where, source)
    try:
        layers = conv_feature_layers(spec)
    except (ValueError, SyntaxError, RecursionError) as e:
        raise CheckpointError(f"{source}: fairseq {m_where}.conv_feature_layers={spec!r:.80} is unreadable "
                              f"({e})") from None
    hidden = _field(model, "encoder_embed_dim", 768, m_where, source)
    if layers[-1][0] == hidden:
        raise CheckpointError(f"{source}: fairseq {m_where}.encoder_embed_dim={hidden} equals the extractor's "
                              "width, so the model has no post_extract_proj, which HF HubertModel always has")
    final_dim = _field(model, "final_dim", 0, m_where, source)
    proj = final_dim if final_dim > 0 else hidden
    if final_proj is not None and tuple(final_proj.shape) != (proj, hidden):
        raise CheckpointError(f"{source}: final_proj.weight is {tuple(final_proj.shape)} but fairseq {m_where}."
                              f"final_dim={final_dim} means ({proj}, {hidden}) (untie_final_proj with several "
                              "label sets is not supported)")
    hf = {
        "hidden_size": hidden,
        "num_hidden_layers": _field(model, "encoder_layers", 12, m_where, source),
        "num_attention_heads": _field(model, "encoder_attention_heads", 12, m_where, source),
        "intermediate_size": _field(model, "encoder_ffn_embed_dim", 3072, m_where, source),
        "conv_dim": [d for d, _, _ in layers], "conv_kernel": [k for _, k, _ in layers],
        "conv_stride": [s for _, _, s in layers],
        "conv_bias": _field(model, "conv_bias", False, m_where, source),
        "num_conv_pos_embeddings": _field(model, "conv_pos", 128, m_where, source),
        "num_conv_pos_embedding_groups": _field(model, "conv_pos_groups", 16, m_where, source),
        "classifier_proj_size": proj,
    }
    try:
        return HubertConfig.from_hf(hf, f"{source} (fairseq {m_where})")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


# --------------------------------------------------------------------------------------------- public
def read_fairseq_hubert(path: str | Path) -> tuple[HubertConfig, dict[str, np.ndarray]]:
    """A fairseq HuBERT `.pt` -> (HubertConfig, state dict in torch layout with HF names, float32,
    weight_g/weight_v unfolded). Raises CheckpointError with a one-line message on any problem."""
    torch = _torch()
    path = Path(path)
    ckpt = _load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or not ckpt["model"]:
        raise CheckpointError(f"{path}: not a fairseq checkpoint (expected a dict with a 'model' state dict "
                              "next to 'cfg' or 'args')")
    if not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        raise CheckpointError(f"{path}: the fairseq 'model' entry holds something other than tensors")
    # the config first: a refused architecture is named by its field, not by the parameters it adds
    cfg = hubert_config(ckpt, ckpt["model"].get("final_proj.weight"), str(path))
    # fairseq saves fp16 weights from fp16 training; float32 holds them exactly
    state = {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.detach().cpu().numpy()
             for k, v in ckpt["model"].items()}
    return cfg, hf_names(state, str(path))
