"""The RVC synthesizer in the harness: one synthetic `.pth` per variant; generated inputs (features, pitch from
a glide with unvoiced frames, speaker) and injected noise, all from the case's seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rvc_mlx.testing.components import CaseSpec, Component, SpecError
from rvc_mlx.testing.taps import LayoutMap, LayoutRule

N, S = "NLC", "same"


class SynthComponent(Component):
    name = "synth"
    root = "model"
    layouts = LayoutMap((
        LayoutRule("model", output=N, inputs=(S, S, S, S, S, N, S)),
        LayoutRule("emb_g", output=S),
        LayoutRule("enc_p", output=N, inputs=(S, S, S)),
        LayoutRule("enc_p.emb_*", output=S),
        LayoutRule("enc_p.lrelu", output=S),
        LayoutRule("enc_p.encoder.attn_layers.[0-9]", output=N, inputs=(N, N, S)),
        LayoutRule("dec", output=N, inputs=(N, S, N, S)),
        LayoutRule("dec.m_source*", output=S),
        LayoutRule("*", output=N),
    ))
    # the layouts of the taps model code names (`instrument.tap(..., layout=)`; a test checks them against a run)
    extra_layouts = {"synth.z_p": N, "synth.upsampled*": N, "synth.stage*": N}

    def weights_key(self, case: CaseSpec | None) -> str:
        if case is None or not case.variant:
            raise SpecError("synth cases need a `variant` in golden/cases.toml")
        return f"synth-{case.variant}"

    def state_dict(self, path: Path) -> dict[str, np.ndarray]:
        from rvc_mlx.checkpoints import read_rvc_checkpoint

        return read_rvc_checkpoint(path)[1]

    def load_input(self, case: CaseSpec) -> tuple[dict, dict[str, Any]]:
        from rvc_common.config import synth_variants
        from rvc_common.inputs import coarse_pitch, make_noise

        cfg = synth_variants()[case.variant]
        t = int(case.frames or 4)
        rng = np.random.Generator(np.random.PCG64(case.seed))
        feats = rng.standard_normal((t, cfg.text_enc_hidden_dim)).astype(np.float32)
        hz = (110.0 * 2 ** (np.arange(t) / max(t, 1))).astype(np.float32)
        hz[::3] = 0.0  # unvoiced frames
        inputs = {"features": feats, "pitch_coarse": coarse_pitch(hz), "pitch_hz": hz, "speaker_id": 5,
                  "noise": make_noise(cfg, t, case.seed + 1)}
        info = {"generator": "rvc_mlx.testing.components.synth", "variant": case.variant, "frames": t,
                "seed": case.seed, "sha256": "generated", "start": 0, "samples": t}
        return inputs, info

    def twin_class(self) -> Any:
        from reference_torch.synthesizer.model import Synthesizer

        return Synthesizer

    def mlx_class(self) -> Any:
        from rvc_mlx.synthesizer.model import Synthesizer

        return Synthesizer

    def run_twin(self, twin: Any, inputs: dict) -> Any:
        return twin.infer(**inputs)

    def run_mlx(self, model: Any, inputs: dict) -> Any:
        return model.infer_mx(**inputs)
