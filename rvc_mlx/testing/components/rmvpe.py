"""RMVPE in the harness: synthetic or user `rmvpe.pt`, twin and MLX port run through `.f0(audio)`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rvc_mlx.testing.components import Component
from rvc_mlx.testing.taps import LayoutMap, LayoutRule


class RMVPEComponent(Component):
    name = "rmvpe"
    root = "model"
    layouts = LayoutMap((
        LayoutRule("model", output="same", inputs="NLC"),  # E2E: mel (B,T,128) in MLX, (B,128,T) in torch
        LayoutRule("fc", output="same"),
        LayoutRule("fc.*", output="same"),
        LayoutRule("unet*", output="NHWC"),
        LayoutRule("cnn", output="NHWC"),
    ))
    # the layouts of the taps model code names (`instrument.tap(..., layout=)`; a test checks them against a run)
    extra_layouts = {"rmvpe.mel": "NLC"}

    def state_dict(self, path: Path) -> dict[str, np.ndarray]:
        from rvc_mlx.checkpoints import load_torch_checkpoint, tensors_to_numpy

        return tensors_to_numpy(load_torch_checkpoint(path), path, self.name)

    def twin_class(self) -> Any:
        from reference_torch.rmvpe import RMVPE

        return RMVPE

    def mlx_class(self) -> Any:
        from rvc_mlx.rmvpe import RMVPE

        return RMVPE

    def run_twin(self, twin: Any, audio: np.ndarray) -> Any:
        return twin.f0(audio)

    def run_mlx(self, model: Any, audio: np.ndarray) -> Any:
        return model.f0(audio)

    def pitch_ignore(self, ref, policy, rounding: float = 0.0) -> dict[str, np.ndarray]:
        """Frames where the oracle's voicing (max salience vs 0.03) or argmax (top-2 gap) is closer to flipping
        than the salience tolerance: a float32 implementation may legitimately decide them either way."""
        if "rmvpe.f0" not in ref.taps or "rmvpe.salience" not in ref.taps:
            return {}
        from rvc_common.config import RMVPE as CFG

        sal = ref.value("rmvpe.salience").astype(np.float64)
        margin = self.decision_margin(ref, policy, "rmvpe.salience", sal, rounding)
        return {"rmvpe.f0": self.near_decision(sal, CFG.threshold, margin)}
