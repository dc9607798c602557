"""Taps: both recorders name values by module path, convert layouts explicitly, and leave models untouched."""

import mlx.core as mx
import mlx.nn as mnn
import numpy as np
import pytest
import torch
import torch.nn as tnn

from rvc_mlx.testing.taps import (
    LayoutMap,
    LayoutRule,
    MLXRecorder,
    TapError,
    TorchRecorder,
    from_torch_layout,
    tap,
    to_torch_layout,
)


class TorchToy(tnn.Module):
    def __init__(self):
        super().__init__()
        self.convs = tnn.ModuleList([tnn.Conv1d(2, 3, 3, padding=1), tnn.Conv1d(3, 3, 1)])
        self.act = tnn.Tanh()

    def forward(self, x):
        x = self.act(self.convs[0](x))
        x = self.act(self.convs[1](x))  # the same module called twice
        tap("toy.energy", (x * x).sum(dim=1))
        return x, x.mean(dim=-1)


class MLXToy(mnn.Module):
    def __init__(self):
        super().__init__()
        self.convs = [mnn.Conv1d(2, 3, 3, padding=1), mnn.Conv1d(3, 3, 1)]
        self.act = mnn.Tanh()

    def __call__(self, x):  # x: (B, T, C)
        x = self.act(self.convs[0](x))
        x = self.act(self.convs[1](x))
        tap("toy.energy", (x * x).sum(axis=-1))
        return x, x.mean(axis=1)


LAYOUTS = LayoutMap((LayoutRule("model:1", "same"), LayoutRule("model", "NLC"), LayoutRule("*", "NLC")))


def _pair():
    t, m = TorchToy().eval(), MLXToy()
    sd = {k: v.detach().numpy() for k, v in t.state_dict().items()}
    m.load_weights([(k, mx.array(v.transpose(0, 2, 1) if v.ndim == 3 else v)) for k, v in sd.items()])
    return t, m


def test_both_recorders_name_taps_identically_and_agree_in_torch_layout():
    t, m = _pair()
    x = np.random.default_rng(0).standard_normal((1, 2, 7)).astype(np.float32)
    with TorchRecorder(t) as tr:
        t(torch.from_numpy(x))
    with MLXRecorder(m, LAYOUTS) as mr:
        m(mx.array(x.transpose(0, 2, 1)))
    expected = ["convs.0", "act", "convs.1", "act#2", "toy.energy", "model:0", "model:1"]
    assert list(tr.records) == expected
    assert list(mr.records) == expected
    for name in expected:
        np.testing.assert_allclose(mr.records[name].value, tr.records[name].value, rtol=1e-5, atol=1e-6)
    assert tr.records["convs.0"].module_type == "Conv1d"
    assert mr.records["toy.energy"].kind == "extra"


def test_mlx_recorder_restores_classes_even_when_the_model_raises():
    _, m = _pair()
    before = [type(mod) for _, mod in m.named_modules()]
    with pytest.raises(ValueError):
        with MLXRecorder(m, LAYOUTS):
            m(mx.zeros((1, 5, 4)))  # wrong channel count
    assert [type(mod) for _, mod in m.named_modules()] == before


def test_recorder_select_keeps_only_matching_taps_and_records_inputs_on_request():
    t, _ = _pair()
    with TorchRecorder(t, select=["convs.*"], inputs=True) as tr:
        t(torch.zeros(1, 2, 5))
    assert list(tr.records) == ["convs.0", "convs.1"]
    (args, kwargs) = tr.records["convs.1"].inputs
    assert args[0].shape == (1, 3, 5) and kwargs == {}


def test_extra_tap_without_an_active_recorder_is_a_no_op():
    v = np.arange(3)
    assert tap("nothing.here", v) is v


def test_layout_conversion_round_trips_and_refuses_a_wrong_rank():
    a = np.arange(24).reshape(1, 2, 3, 4)
    assert to_torch_layout(a, "NHWC", "x").shape == (1, 4, 2, 3)
    np.testing.assert_array_equal(from_torch_layout(to_torch_layout(a, "NHWC", "x"), "NHWC", "x"), a)
    with pytest.raises(TapError, match=r"tap 'bad': layout NHWC needs rank 4, got shape \(2, 3\)"):
        to_torch_layout(np.zeros((2, 3)), "NHWC", "bad")
    with pytest.raises(TapError, match="unknown layout"):
        to_torch_layout(a, "NCHW?", "x")


def test_a_tap_without_a_layout_rule_is_an_error_not_a_guess():
    with pytest.raises(TapError, match="no layout rule matches tap 'enc.0'"):
        LayoutMap((LayoutRule("dec.*", "NLC"),)).output("enc.0")
