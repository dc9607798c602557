"""HuBERT / ContentVec in the harness: a ContentVec directory, twin and MLX port run through `.features()`
(all 12 layers, then final_proj, so every module is exercised)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rvc_mlx.testing.components import Component
from rvc_mlx.testing.taps import LayoutMap, LayoutRule, tap


class HubertComponent(Component):
    name = "hubert"
    root = "model"
    layouts = LayoutMap((
        LayoutRule("feature_extractor", output="NLC", inputs="same"),  # (B, N) in, (B, 512, L) out in torch
        LayoutRule("feature_extractor.*", output="NLC"),
        LayoutRule("encoder.pos_conv_embed.*", output="NLC"),  # inside the pos conv torch is (B, C, T)
        LayoutRule("*", output="same"),
    ))

    def state_dict(self, path: Path) -> dict[str, np.ndarray]:
        from rvc_mlx.checkpoints import read_contentvec_dir

        return read_contentvec_dir(path)[1]

    def twin_class(self) -> Any:
        from reference_torch.hubert import HuBERT

        return HuBERT

    def mlx_class(self) -> Any:
        from rvc_mlx.hubert import HuBERT

        return HuBERT

    def run_twin(self, twin: Any, audio: np.ndarray) -> Any:
        return tap("hubert.features", twin.features(audio, layer=12, final_proj=True))

    def run_mlx(self, model: Any, audio: np.ndarray) -> Any:
        return tap("hubert.features", model.features_mx(audio, layer=12, final_proj=True))
