"""The per-op-class profile charges each module's self time to the right class, in both frameworks."""

import mlx.core as mx
import mlx.nn as nn
import torch

from rvc_mlx import layers
from rvc_mlx.testing.profile import OP_CLASSES, op_class, profile_mlx, profile_torch


def test_modules_are_classed_by_kind_in_both_frameworks():
    assert op_class(torch.nn.Conv1d(4, 4, 3)) == op_class(layers.Conv1d(4, 4, 3)) == "conv"
    assert op_class(torch.nn.Linear(4, 4)) == op_class(nn.Linear(4, 4)) == "gemm"
    assert op_class(torch.nn.GRU(4, 4)) == op_class(layers.GRU(4, 4)) == "recurrent"
    assert op_class(torch.nn.LayerNorm(4)) == op_class(nn.LayerNorm(4)) == "elementwise"
    # depthwise: a per-channel multiply-add over time, no GEMM
    assert op_class(torch.nn.Conv1d(8, 8, 5, groups=8)) == op_class(layers.Conv1d(8, 8, 5, groups=8)) == "elementwise"
    assert op_class(torch.nn.Conv1d(8, 8, 5, groups=2)) == op_class(layers.Conv1d(8, 8, 5, groups=2)) == "conv"


class _MlxNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = layers.Conv1d(8, 16, 3, padding=1)
        self.norm = nn.LayerNorm(16)
        self.proj = nn.Linear(16, 4)

    def __call__(self, x):
        return self.proj(self.norm(self.conv(x)))


def test_profiles_report_every_class_and_self_times_within_the_wall_time():
    net = _MlxNet()
    x = mx.random.normal((1, 2000, 8))
    prof = profile_mlx(net, lambda: net(x))
    assert set(prof) == set(OP_CLASSES) | {"total"}
    assert prof["conv"] > 0 and prof["gemm"] > 0 and prof["elementwise"] > 0 and prof["recurrent"] == 0
    assert sum(prof[c] for c in OP_CLASSES) <= prof["total"] * 1.05
    assert net.conv.__call__.__func__ is layers.Conv1d.__call__  # the patch is undone

    tnet = torch.nn.Sequential(torch.nn.Conv1d(8, 16, 3, padding=1), torch.nn.GRU(2000, 4, batch_first=True))
    tprof = profile_torch(tnet, lambda: tnet(torch.randn(1, 8, 2000)))
    assert tprof["conv"] > 0 and tprof["recurrent"] > 0 and tprof["gemm"] == 0
    assert sum(tprof[c] for c in OP_CLASSES) <= tprof["total"] * 1.05


class _FusedCaller(nn.Module):
    """Calls its conv through a @profiled method (as the synthesizer's fused resblocks do), not __call__."""

    def __init__(self):
        super().__init__()
        self.conv = layers.Conv2d(16, 16, 3, padding=1)
        self.bn = layers.BatchNorm(16)

    def __call__(self, x):
        return self.conv.conv_bn_relu(x, self.bn)


def test_profiled_methods_are_charged_to_their_module_class_not_to_the_caller():
    net = _FusedCaller()
    net.eval()
    x = mx.random.normal((1, 64, 64, 16))
    prof = profile_mlx(net, lambda: net(x))
    assert prof["conv"] > 0  # the kernel path never calls Conv2d.__call__: only the marked method is timed
    assert layers.Conv2d.__dict__["conv_bn_relu"].profiled  # the patch is undone: the marked original is back
