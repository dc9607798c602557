"""FCPE in the harness: torchfcpe's shipped weights (fcpe_c_v001.pt), twin and MLX port run through `.f0(audio)`
with RVC's decoder (local argmax, threshold 0.006)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rvc_mlx.testing.components import Component
from rvc_mlx.testing.taps import LayoutMap, LayoutRule

# torchfcpe's bundled model runs RVC's F0 with this confidence threshold
THRESHOLD = 0.006


class FCPEComponent(Component):
    name = "fcpe"
    root = "model"
    layouts = LayoutMap((
        LayoutRule("model", output="same"),  # mel (B, T, 128) -> latent (B, T, 360), both (B, T, C)
        LayoutRule("input_stack.*", output="NLC"),
        LayoutRule("net", output="same"),
        LayoutRule("net.encoder_layers.[0-9]", output="same"),
        LayoutRule("net.encoder_layers.*.conformer", output="same"),
        # conformer.net: LayerNorm on (B, T, C), Transpose to torch's (B, C, T) for the convs, Transpose back;
        # the MLX Transposes are identities (MLX convs are NLC already)
        LayoutRule("net.encoder_layers.*.conformer.net.0", output="same"),
        LayoutRule("net.encoder_layers.*.conformer.net.1", output="NLC", inputs="same"),
        LayoutRule("net.encoder_layers.*.conformer.net.7", output="same", inputs="NLC"),
        LayoutRule("net.encoder_layers.*.conformer.net.8", output="same"),
        LayoutRule("net.encoder_layers.*.conformer.net.*", output="NLC"),
        LayoutRule("norm", output="same"),
        LayoutRule("output_proj", output="same"),
    ))

    def state_dict(self, path: Path) -> dict[str, np.ndarray]:
        from rvc_mlx.checkpoints import load_torch_checkpoint, tensors_to_numpy

        raw = load_torch_checkpoint(path)
        return tensors_to_numpy(raw.get("model") if isinstance(raw, dict) else raw, path, self.name)

    def twin_class(self) -> Any:
        from reference_torch.fcpe import FCPE

        return FCPE

    def mlx_class(self) -> Any:
        from rvc_mlx.fcpe import FCPE

        return FCPE

    def run_twin(self, twin: Any, audio: np.ndarray) -> Any:
        return twin.f0(audio, threshold=THRESHOLD)

    def run_mlx(self, model: Any, audio: np.ndarray) -> Any:
        return model.f0(audio, threshold=THRESHOLD)

    def pitch_ignore(self, ref, policy, rounding: float = 0.0) -> dict[str, np.ndarray]:
        """Frames whose peak latent is within tolerance of the 0.006 threshold, or whose top-2 bins nearly tie."""
        if "fcpe.f0" not in ref.taps or "fcpe.latent" not in ref.taps:
            return {}
        lat = ref.value("fcpe.latent").astype(np.float64).reshape(-1, 360)
        margin = self.decision_margin(ref, policy, "fcpe.latent", lat, rounding)
        return {"fcpe.f0": self.near_decision(lat, THRESHOLD, margin)}
