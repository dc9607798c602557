"""fairseq HuBERT checkpoints (the RVC WebUI's hubert_base.pt) are read without running pickled code: fairseq
names and config become the HF HubertModel's, features equal those of the same weights in the ContentVec
directory format, unsupported architectures and hostile pickles are refused in one line; HuBERTs without
final_proj load, give layer-12 features and refuse RVC v1 use up front."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import types
import typing
from collections import OrderedDict, defaultdict
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
import torch

from rvc_common.config import HUBERT, HubertConfig
from rvc_mlx.checkpoints import CheckpointError, convert_state, read_contentvec_dir, save_mlx_weights
from rvc_mlx.fairseq import is_fairseq_checkpoint, read_fairseq_hubert
from rvc_mlx.hubert import HuBERT, HubertModel
from rvc_mlx.pipeline import Pipeline
from rvc_mlx.testing.signals import read_wav
from rvc_mlx.testing.synthetic import cached_checkpoint

SPEECH = Path(__file__).resolve().parents[1] / "golden" / "inputs" / "speech.wav"
SMALL = dataclasses.replace(HUBERT, num_hidden_layers=2)  # two layers keep the test fast; all names still occur
DEFAULT_CONV = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
# What a real omegaconf DictConfig (2.0.6, as fairseq pins, and 2.3.0) references when pickled with torch.save,
# as listed by torch.serialization.get_unsafe_globals_in_checkpoint; the fakes below reproduce exactly these.
DICTCONFIG_GLOBALS = {"builtins.dict", "builtins.int", "builtins.list", "collections.defaultdict",
                      "omegaconf.base.ContainerMetadata", "omegaconf.base.Metadata",
                      "omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig",
                      "omegaconf.nodes.AnyNode", "typing.Any"}


# --------------------------------------------------------------------------------------------- fakes
# Classes with the module paths of fairseq's and omegaconf's, installed in sys.modules only while a file is
# written (or deliberately unpickled unsafely), so the pickle stream names the globals the real files name.
class Dictionary:
    """fairseq.data.dictionary.Dictionary's pickled attributes (a HuBERT task's k-means label vocabulary)."""

    def __init__(self, n_labels: int):
        self.bos_word, self.unk_word, self.pad_word, self.eos_word = "<s>", "<unk>", "<pad>", "</s>"
        self.symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [str(i) for i in range(n_labels)]
        self.count = [1, 1, 1, 1] + [1000 + i for i in range(n_labels)]
        self.indices = {s: i for i, s in enumerate(self.symbols)}
        self.bos_index, self.pad_index, self.eos_index, self.unk_index, self.nspecial = 0, 1, 2, 3, 4


class ContainerMetadata:
    def __init__(self, **fields):
        self.__dict__.update(fields)


class Metadata(ContainerMetadata):
    pass


class AnyNode:
    def __init__(self, value, key, parent):
        self._metadata = Metadata(ref_type=typing.Any, object_type=None, optional=True, key=key, flags={})
        self._parent, self._val = parent, value


class DictConfig:
    def __init__(self, content: dict, key=None, parent=None):
        self._metadata = ContainerMetadata(ref_type=typing.Any, object_type=dict, optional=True, key=key, flags={},
                                           resolver_cache=defaultdict(dict), key_type=typing.Any,
                                           element_type=typing.Any)
        self._parent = parent
        self._content = {k: _node(v, k, self) for k, v in content.items()}


class ListConfig:
    def __init__(self, content: list, key=None, parent=None):
        self._metadata = ContainerMetadata(ref_type=typing.Any, object_type=list, optional=True, key=key, flags={},
                                           resolver_cache=defaultdict(dict), key_type=int, element_type=typing.Any)
        self._parent = parent
        self._content = [_node(v, i, self) for i, v in enumerate(content)]


def _node(value, key, parent):
    if isinstance(value, dict):
        return DictConfig(value, key, parent)
    if isinstance(value, list):
        return ListConfig(value, key, parent)
    return AnyNode(value, key, parent)


for cls, module in ((Dictionary, "fairseq.data.dictionary"), (ContainerMetadata, "omegaconf.base"),
                    (Metadata, "omegaconf.base"), (AnyNode, "omegaconf.nodes"), (DictConfig, "omegaconf.dictconfig"),
                    (ListConfig, "omegaconf.listconfig")):
    cls.__module__ = module
FAKES = (Dictionary, ContainerMetadata, Metadata, AnyNode, DictConfig, ListConfig)


@contextlib.contextmanager
def fake_modules(*classes):
    """Each class reachable as `<its __module__>.<its __qualname__>` for the duration, in modules of its own."""
    saved = {}
    for cls in classes:
        parts = cls.__module__.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in saved:
                saved[name] = sys.modules.get(name)
                sys.modules[name] = types.ModuleType(name)
        setattr(sys.modules[cls.__module__], cls.__qualname__, cls)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


# --------------------------------------------------------------------------------------------- writers
_TO_FAIRSEQ = [  # HF HubertModel name -> fairseq's (written here independently of rvc_mlx.fairseq)
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"feature_extractor\.conv_layers\.0\.layer_norm\.", "feature_extractor.conv_layers.0.2."),
    (r"feature_projection\.layer_norm\.", "layer_norm."),
    (r"feature_projection\.projection\.", "post_extract_proj."),
    (r"encoder\.pos_conv_embed\.conv\.", "encoder.pos_conv.0."),
    (r"(encoder\.layers\.\d+\.)attention\.", r"\1self_attn."),
    (r"(encoder\.layers\.\d+\.)layer_norm\.", r"\1self_attn_layer_norm."),
    (r"(encoder\.layers\.\d+\.)feed_forward\.intermediate_dense\.", r"\1fc1."),
    (r"(encoder\.layers\.\d+\.)feed_forward\.output_dense\.", r"\1fc2."),
    (r"masked_spec_embed$", "mask_emb"),
]


def fairseq_state(hf: dict[str, np.ndarray]) -> OrderedDict:
    """The fairseq state dict of HF-named weights: fp16 (fp16 training saves it so), plus label_embs_concat."""
    out = OrderedDict()
    for key, value in hf.items():
        for pattern, repl in _TO_FAIRSEQ:
            key = re.sub(pattern, repl, key)
        out[key] = torch.from_numpy(value).half()
    if "final_proj.weight" in hf:
        out["label_embs_concat"] = torch.zeros(504, hf["final_proj.weight"].shape[0], dtype=torch.float16)
    return out


def model_fields(cfg: HubertConfig, conv: str = DEFAULT_CONV) -> dict:
    """fairseq's HubertConfig as OmegaConf.to_container writes it (architecture and training fields)."""
    return {
        "_name": "hubert", "label_rate": 50, "extractor_mode": "default", "encoder_layers": cfg.num_hidden_layers,
        "encoder_embed_dim": cfg.hidden_size, "encoder_ffn_embed_dim": cfg.intermediate_size,
        "encoder_attention_heads": cfg.num_attention_heads, "activation_fn": "gelu", "dropout": 0.1,
        "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.05, "dropout_input": 0.1,
        "dropout_features": 0.1, "final_dim": cfg.classifier_proj_size, "untie_final_proj": False,
        "layer_norm_first": False, "conv_feature_layers": conv, "conv_bias": cfg.conv_bias, "logit_temp": 0.1,
        "target_glu": False, "feature_grad_mult": 0.1, "mask_length": 10, "mask_prob": 0.8,
        "mask_selection": "static", "mask_other": 0.0, "no_mask_overlap": False, "mask_min_space": 1,
        "mask_channel_length": 10, "mask_channel_prob": 0.0, "mask_channel_selection": "static",
        "mask_channel_other": 0.0, "no_mask_channel_overlap": False, "mask_channel_min_space": 1,
        "conv_pos": cfg.num_conv_pos_embeddings, "conv_pos_groups": cfg.num_conv_pos_embedding_groups,
        "latent_temp": [2.0, 0.5, 0.999995], "skip_masked": False, "skip_nomask": False,
    }


TASK = {"_name": "hubert_pretraining", "data": "/checkpoint/data/librispeech/960h", "fine_tuning": False,
        "labels": ["km"], "label_dir": "/checkpoint/labels", "label_rate": 50, "sample_rate": 16000,
        "normalize": False, "enable_padding": False, "max_keep_size": None, "max_sample_size": 250000,
        "min_sample_size": 32000, "single_target": False, "random_crop": True, "pad_audio": False}


def checkpoint(model: OrderedDict, cfg: HubertConfig, layout: str = "hubert_base", conv: str = DEFAULT_CONV,
               model_overrides: dict | None = None, task_overrides: dict | None = None, extra: dict | None = None):
    """fairseq's checkpoint dict (trainer.state_dict) in one of three layouts: `hubert_base` (cfg as a plain
    dict, args None: what RVC's hubert_base.pt holds), `dictconfig` (an omegaconf cfg plus legacy args) and
    `args` (fairseq < 0.10: a flat argparse Namespace, no cfg)."""
    fields = {**model_fields(cfg, conv), **(model_overrides or {})}
    task = {**TASK, **(task_overrides or {})}
    cfg_dict = {"_name": None, "common": {"fp16": True, "seed": 1337, "log_interval": 200},
                "model": fields, "task": task, "criterion": {"_name": "hubert", "pred_masked_weight": 1.0}}
    args = {"hubert_base": None, "dictconfig": argparse.Namespace(arch="hubert", fp16=True),
            "args": argparse.Namespace(**{**task, **fields, "arch": "hubert", "fp16": True})}[layout]
    cfg_value = {"hubert_base": cfg_dict, "dictconfig": DictConfig(cfg_dict), "args": None}[layout]
    return {"args": args, "cfg": cfg_value, "model": model, "criterion": None,
            "optimizer_history": [{"criterion_name": "HubertCriterion", "optimizer_name": "FairseqAdam",
                                   "lr_scheduler_state": {"best": None}, "num_updates": 400000}],
            "task_state": {"dictionaries": [Dictionary(500)]},
            "extra_state": {"metrics": {}, "previous_training_time": 123456.7,
                            "train_iterator": {"epoch": 120, "iterations_in_epoch": 0, "shuffle": True},
                            **(extra or {})}}


def write(path: Path, obj: object, *extra_fakes, legacy: bool = False) -> Path:
    """torch.save as fairseq calls it; `legacy`: the pre-zip container of torch < 1.6 (older fairseq files)."""
    with fake_modules(*FAKES, *extra_fakes):
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def hf_state() -> dict[str, np.ndarray]:
    """The synthetic ContentVec (trained-like statistics) cut to two layers, rounded through fp16 so the fp16
    fairseq file and the fp32 HF file hold the same weights."""
    full = torch.load(str(cached_checkpoint("contentvec") / "pytorch_model.bin"), map_location="cpu",
                      weights_only=True, mmap=True)
    keep = {k: v for k, v in full.items()
            if not (m := re.match(r"encoder\.layers\.(\d+)\.", k)) or int(m.group(1)) < SMALL.num_hidden_layers}
    return {k: v.half().float().numpy() for k, v in keep.items()}


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return read_wav(SPEECH)[3000:3000 + 4000]


def mlx_hubert(cfg: HubertConfig, state: dict[str, np.ndarray], final_proj: bool = True) -> HuBERT:
    model = HubertModel(cfg, final_proj=final_proj)
    model.load_weights([(k, mx.array(v)) for k, v in convert_state(state, model, "test").items()], strict=True)
    return HuBERT(model, source="test")


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and "weights_only" not in text, text
    return text


# --------------------------------------------------------------------------------------------- reading
def test_hubert_base_layout_references_only_the_fairseq_dictionary_global(tmp_path, hf_state):
    # RVC users hit exactly this one global with torch >= 2.6 (RVC-Project/Retrieval-based-Voice-Conversion-WebUI
    # issues 2419, 2575: "Unsupported global: GLOBAL fairseq.data.dictionary.Dictionary"; allowing it alone loads)
    path = write(tmp_path / "hubert_base.pt", checkpoint(fairseq_state(hf_state), SMALL))
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == ["fairseq.data.dictionary.Dictionary"]
    assert is_fairseq_checkpoint(path)


def test_fairseq_file_gives_the_hf_state_config_and_features_of_the_contentvec_dir(tmp_path, hf_state, speech):
    path = write(tmp_path / "hubert_base.pt", checkpoint(fairseq_state(hf_state), SMALL))
    hf_dir = tmp_path / "contentvec"
    hf_dir.mkdir()
    torch.save({k: torch.from_numpy(v) for k, v in hf_state.items()}, hf_dir / "pytorch_model.bin")
    (hf_dir / "config.json").write_text(json.dumps(SMALL.to_hf()))
    cfg_hf, state_hf, _ = read_contentvec_dir(hf_dir)

    cfg, state = read_fairseq_hubert(path)
    assert cfg == cfg_hf == SMALL
    assert set(state) == set(state_hf) - {"masked_spec_embed"}  # mask_emb / label_embs_concat: training only
    assert {"encoder.pos_conv_embed.conv.weight_g", "encoder.pos_conv_embed.conv.weight_v"} <= set(state)
    for key, value in state.items():
        assert value.dtype == np.float32 and np.array_equal(value, state_hf[key]), key
    ours, theirs = mlx_hubert(cfg, state), mlx_hubert(cfg_hf, state_hf)
    for final_proj in (False, True):
        a = ours.features(speech, layer=2, final_proj=final_proj)
        assert a.shape == (SMALL.n_frames(speech.shape[0]), 256 if final_proj else 768)
        assert np.array_equal(a, theirs.features(speech, layer=2, final_proj=final_proj))
    assert not is_fairseq_checkpoint(hf_dir / "pytorch_model.bin")


def test_hubert_base_pt_loads_through_from_checkpoint_and_the_cache_like_the_contentvec_dir(tmp_path, hf_state,
                                                                                            speech, monkeypatch):
    monkeypatch.setenv("RVC_MLX_CACHE", str(tmp_path / "cache"))
    path = write(tmp_path / "hubert_base.pt", checkpoint(fairseq_state(hf_state), SMALL))
    hf_dir = tmp_path / "contentvec"
    hf_dir.mkdir()
    torch.save({k: torch.from_numpy(v) for k, v in hf_state.items()}, hf_dir / "pytorch_model.bin")
    (hf_dir / "config.json").write_text(json.dumps(SMALL.to_hf()))
    ours, theirs = HuBERT.from_checkpoint(path), HuBERT.from_checkpoint(hf_dir)
    assert ours.cfg == theirs.cfg == SMALL and ours.has_final_proj
    for final_proj in (False, True):
        assert np.array_equal(ours.features(speech, layer=2, final_proj=final_proj),
                              theirs.features(speech, layer=2, final_proj=final_proj))
    assert len(list((tmp_path / "cache" / "converted").glob("hubert-*.safetensors"))) == 2
    assert np.array_equal(HuBERT.from_checkpoint(path).features(speech, layer=2), ours.features(speech, layer=2))


ODD = HubertConfig(hidden_size=256, num_hidden_layers=3, num_attention_heads=4, intermediate_size=1024,
                   conv_dim=(384,) * 3, conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), conv_bias=True,
                   num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=8, classifier_proj_size=128)


@pytest.mark.parametrize("layout, legacy", [("hubert_base", False), ("dictconfig", False), ("args", False),
                                            ("args", True)])
def test_every_architecture_field_comes_from_the_checkpoints_cfg_or_args(tmp_path, layout, legacy):
    model = OrderedDict({"final_proj.weight": torch.zeros(128, 256, dtype=torch.float16)})
    path = write(tmp_path / "h.pt", checkpoint(model, ODD, layout, conv="[(384,10,5)] + [(384,3,2)] * 2"),
                 legacy=legacy)
    assert is_fairseq_checkpoint(path)
    if layout == "dictconfig":
        assert set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))) == DICTCONFIG_GLOBALS | {
            "argparse.Namespace", "fairseq.data.dictionary.Dictionary"}
    before = set(sys.modules)
    cfg, state = read_fairseq_hubert(path)
    assert cfg == ODD and list(state) == ["final_proj.weight"]
    assert not {m for m in set(sys.modules) - before if m.startswith(("omegaconf", "fairseq"))}  # none imported


@pytest.mark.parametrize("section, field, value", [
    ("model", "layer_norm_first", True),  # pre-LN: HuBERT large / xlarge
    ("model", "extractor_mode", "layer_norm"),
    ("model", "activation_fn", "relu"),
    ("model", "encoder_layers", "${model.depth}"),  # an unresolved interpolation
    ("model", "conv_feature_layers", "__import__('os').system('echo no')"),  # read, never evaluated
    ("model", "encoder_embed_dim", 512),  # equal to the extractor width: fairseq then has no post_extract_proj
    ("task", "normalize", True),
])
def test_an_architecture_hubert_config_cannot_represent_is_refused_naming_the_field(tmp_path, section, field, value):
    overrides = {f"{section}_overrides": {field: value}}
    path = write(tmp_path / "h.pt", checkpoint(OrderedDict({"mask_emb": torch.zeros(768)}), SMALL, **overrides))
    with pytest.raises(CheckpointError) as e:
        read_fairseq_hubert(path)
    assert f"cfg.{section}.{field}=" in one_line(e)


def test_parameters_without_an_hf_counterpart_are_refused_by_name(tmp_path, hf_state):
    model = fairseq_state(hf_state)
    model["encoder.layers.0.conv_module.depthwise_conv.weight"] = torch.zeros(3)  # a conformer layer
    with pytest.raises(CheckpointError) as e:
        read_fairseq_hubert(write(tmp_path / "h.pt", checkpoint(model, SMALL)))
    assert "encoder.layers.0.conv_module.depthwise_conv.weight" in one_line(e)


def test_a_plain_state_dict_is_not_taken_for_a_fairseq_checkpoint(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"encoder.layer_norm.weight": torch.ones(768)}, path)
    assert not is_fairseq_checkpoint(path)
    with pytest.raises(CheckpointError) as e:
        read_fairseq_hubert(path)
    assert "not a fairseq checkpoint" in one_line(e)


# --------------------------------------------------------------------------------------------- hostile files
class OsSystem:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Eval(OsSystem):
    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


class CheckCall(OsSystem):
    def __reduce__(self):
        return subprocess.check_call, (["touch", str(self.marker)],)


class RunsOnConstruction:
    """Poses as omegaconf.dictconfig.DictConfig: whoever resolves that name to real code runs the command."""

    def __init__(self, command: str):
        os.system(command)


RunsOnConstruction.__module__, RunsOnConstruction.__qualname__ = "omegaconf.dictconfig", "DictConfig"


class DisguisedAsDictConfig(OsSystem):
    def __reduce__(self):
        return RunsOnConstruction, (f"touch {self.marker}",)


def _global(fn) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload, where, name", [
    (OsSystem, "cfg", _global(os.system)),  # posix.system on Linux/macOS
    (Eval, "inside a DictConfig", "builtins.eval"),
    (CheckCall, "next to the Dictionary in task_state", "subprocess.check_call"),  # pickled as commands.*
])
def test_a_pickle_that_calls_code_is_refused_naming_the_global_and_nothing_runs(tmp_path, payload, where, name,
                                                                                legacy):
    marker = tmp_path / "ran"
    ckpt = checkpoint(OrderedDict({"mask_emb": torch.zeros(768)}), SMALL, layout="dictconfig")
    if where == "cfg":
        ckpt["cfg"] = payload(marker)
    elif where == "inside a DictConfig":
        ckpt["cfg"]._content["model"]._content["encoder_layers"] = payload(marker)
    else:
        ckpt["task_state"]["dictionaries"].append(payload(marker))
    path = write(tmp_path / "hostile.pt", ckpt, legacy=legacy)
    with pytest.raises(CheckpointError) as e:
        read_fairseq_hubert(path)
    assert name in one_line(e) and "refusing to unpickle" in str(e.value)
    assert not marker.exists()
    with fake_modules(*FAKES):  # the payload is live: an unrestricted load runs it
        torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_reduce_through_an_allowed_name_builds_the_inert_stand_in_not_the_named_class(tmp_path, hf_state):
    marker = tmp_path / "ran"
    ckpt = checkpoint(fairseq_state(hf_state), SMALL, extra={"payload": DisguisedAsDictConfig(marker)})
    path = write(tmp_path / "disguised.pt", ckpt, RunsOnConstruction)
    cfg, _ = read_fairseq_hubert(path)
    assert cfg == SMALL and not marker.exists()
    with fake_modules(RunsOnConstruction, *FAKES[:1]):  # the payload is live where the name resolves to code
        torch.load(path, weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------------------------- no final_proj
@pytest.fixture(scope="module")
def no_proj_file(tmp_path_factory, hf_state) -> Path:
    """A ContentVec without final_proj (like Applio's custom embedders), converted as the converter writes it."""
    state = {k: v for k, v in hf_state.items() if not k.startswith("final_proj.")}
    path = tmp_path_factory.mktemp("noproj") / "hubert.safetensors"
    arrays = convert_state(state, HubertModel(SMALL, final_proj=False), "test")
    save_mlx_weights(path, arrays, {"component": "hubert", "config": json.dumps(SMALL.to_hf())})
    return path


def test_hubert_without_final_proj_loads_and_gives_the_last_layers_features(no_proj_file, hf_state, speech):
    hubert = HuBERT.from_checkpoint(no_proj_file)
    assert not hubert.has_final_proj and "final_proj" not in hubert.model
    with_proj = mlx_hubert(SMALL, hf_state)
    assert with_proj.has_final_proj
    assert np.array_equal(hubert.features(speech, layer=2), with_proj.features(speech, layer=2))


def test_hubert_without_final_proj_refuses_final_proj_features_in_one_line(no_proj_file, speech):
    with pytest.raises(ValueError) as e:
        HuBERT.from_checkpoint(no_proj_file).features_mx(speech, layer=2, final_proj=True)
    assert one_line(e) == (f"{no_proj_file}: this HuBERT has no final_proj, which RVC v1 models need; use a "
                           "ContentVec/HuBERT with final_proj or a v2 model")


def test_pipeline_refuses_a_v1_model_with_a_hubert_without_final_proj_at_construction(no_proj_file):
    hubert = HuBERT.from_checkpoint(no_proj_file)
    synth = {v: SimpleNamespace(cfg=SimpleNamespace(version=v, text_enc_hidden_dim={"v1": 256, "v2": 768}[v]))
             for v in ("v1", "v2")}  # construction reads only the synthesizer's config
    with pytest.raises(ValueError) as e:
        Pipeline(hubert, synth["v1"])
    assert "has no final_proj" in one_line(e)
    Pipeline(hubert, synth["v2"])
