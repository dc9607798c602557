"""An implementation nobody here wrote: a PyTorch twin exported to ONNX, run with ONNX Runtime, every module
output exposed as a graph output named by its tap (so `rvc-mlx check` can judge it). Needs torch, onnx and
onnxruntime (dev dependencies).

Forward hooks wrap each module output in a marker whose ONNX form is a custom `tap::Tap(name=...)` node; after
the (TorchScript) export each marker becomes an Identity whose output value carries the tap's name and is added
to the graph outputs. Constant folding stays off, so BatchNorm stays a `BatchNormalization` node whose running
statistics are initializers under their state-dict names (a test changes one). Taps follow the harness's names:
`path`, `path:i` for tuple elements, `path#k` for a module's k-th call, `model` for the root.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np


def _marker():
    import torch

    class Tap(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, name):
            return x.clone()  # a value of its own in the trace

        @staticmethod
        def symbolic(g, x, name):
            out = g.op("tap::Tap", x, name_s=name)
            out.setType(x.type())  # later ops need the traced shape
            return out

    return Tap


def _wrap(tap, out: Any, name: str) -> Any:
    import torch

    if isinstance(out, torch.Tensor):
        return tap.apply(out, name)
    if isinstance(out, (tuple, list)):
        sep = ":" if ":" not in name else "."
        return type(out)(_wrap(tap, o, f"{name}{sep}{i}") for i, o in enumerate(out))
    return out


def export(model, example: tuple, path: str | Path, input_names: list[str], root: str = "model",
           opset: int = 17) -> list[str]:
    """Export `model` (an nn.Module in eval mode) traced on `example` to `path` with every module output a named
    graph output; returns the tap names in execution order."""
    import torch

    tap = _marker()
    kept: list = []
    calls: dict[str, int] = {}

    def hook(module, args, out, path):
        calls[path] = calls.get(path, 0) + 1
        out = _wrap(tap, out, path if calls[path] == 1 else f"{path}#{calls[path]}")
        kept.append(out)  # returned too, so that a tap nothing reads (a GRU's final state) survives the export
        return out

    class KeepTaps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *xs):
            kept.clear()
            calls.clear()
            return self.model(*xs), kept[:]

    handles = [m.register_forward_hook(lambda m, a, o, p=(name or root): hook(m, a, o, p))
               for name, m in model.named_modules() if not isinstance(m, torch.nn.ModuleList)]
    try:
        with warnings.catch_warnings():  # "the trace is static" warnings: this export is for one input size
            warnings.simplefilter("ignore")
            torch.onnx.export(KeepTaps(), example, str(path), dynamo=False, opset_version=opset,
                              do_constant_folding=False, input_names=input_names, output_names=["output"],
                              custom_opsets={"tap": 1})
    finally:
        for h in handles:
            h.remove()
    return _expose(Path(path))


def _expose(path: Path) -> list[str]:
    """Markers -> Identity nodes named by tap, each a graph output; initializers under state-dict names."""
    import onnx
    import onnx.helper as oh

    m = onnx.load(str(path))
    g = m.graph
    rename, taps = {}, []
    for n in g.node:
        if n.domain == "tap" and n.op_type == "Tap":
            name = oh.get_attribute_value(n.attribute[0]).decode()
            rename[n.output[0]] = name
            n.op_type, n.domain, n.name = "Identity", "", f"tap/{name}"
            del n.attribute[:]
            n.output[0] = name
            taps.append(name)
    for t in g.initializer:  # the KeepTaps wrapper prefixed every weight with `model.`
        if t.name.startswith("model."):
            rename[t.name] = t.name[len("model."):]
            t.name = rename[t.name]
    for n in g.node:
        for k, v in enumerate(n.input):
            if v in rename:
                n.input[k] = rename[v]
    outputs = [o for o in g.output if o.name == "output"][:1]
    del g.output[:]
    g.output.extend(outputs)
    for o in outputs:
        if o.name in rename:
            g.node.append(oh.make_node("Identity", [rename[o.name]], [o.name]))
    opsets = [op for op in m.opset_import if op.domain != "tap"]
    del m.opset_import[:]
    m.opset_import.extend(opsets)
    m = onnx.shape_inference.infer_shapes(m)
    info = {v.name: v for v in m.graph.value_info}
    for t in taps:
        m.graph.output.append(info[t] if t in info else oh.make_empty_tensor_value_info(t))
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return taps


def run(path: str | Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every named output of the model on `feeds`, with ONNX Runtime on the CPU (no graph fusions: each tap is
    the value the node computed)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def scale_initializer(path: str | Path, out: str | Path, name: str, index: int, factor: float) -> None:
    """Copy the model with element `index` of initializer `name` multiplied by `factor` (a planted bug)."""
    import onnx
    import onnx.numpy_helper as onh

    m = onnx.load(str(path))
    init = {i.name: i for i in m.graph.initializer}
    if name not in init:
        raise KeyError(f"{path} has no initializer {name!r}")
    value = onh.to_array(init[name]).copy()
    value.reshape(-1)[index] *= factor
    init[name].CopyFrom(onh.from_array(value, name))
    onnx.save(m, str(out))
