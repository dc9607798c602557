"""`rvc-mlx` command line: checkpoint conversion (more commands arrive with the pipeline)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rvc_mlx.checkpoints import CheckpointError, convert_checkpoint


COMPONENTS = ["rmvpe", "crepe", "fcpe"]


def _convert(component: str, checkpoint: Path, out: Path) -> Path:
    if component == "rmvpe":
        from rvc_mlx.rmvpe import E2E

        return convert_checkpoint(checkpoint, component, E2E(), out)
    if component == "crepe":  # full or tiny, told apart by conv1's width
        from rvc_mlx.crepe import convert_crepe

        return convert_crepe(checkpoint, out)
    if component == "fcpe":
        from rvc_mlx.fcpe import CFNaiveMelPE, read_fcpe_state

        return convert_checkpoint(checkpoint, component, CFNaiveMelPE(), out, read_state=read_fcpe_state)
    raise SystemExit(f"unknown component {component!r}")


def cmd_convert_weights(a: argparse.Namespace) -> int:
    out = a.output or Path(a.checkpoint).with_suffix(".safetensors")
    if out.exists() and not a.force:
        print(f"rvc-mlx: {out} exists (use --force to overwrite)", file=sys.stderr)
        return 1
    if out.exists():
        out.unlink()
    path = _convert(a.component, a.checkpoint, out)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rvc-mlx", description="RVC inference on MLX")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert-weights", help="convert an original checkpoint to MLX safetensors")
    c.add_argument("component", choices=COMPONENTS)
    c.add_argument("checkpoint", type=Path, help="original .pt/.pth (read with torch.load(weights_only=True))")
    c.add_argument("-o", "--output", type=Path, default=None)
    c.add_argument("--force", action="store_true")
    c.set_defaults(func=cmd_convert_weights)
    a = p.parse_args(argv)
    try:
        return a.func(a)
    except CheckpointError as e:
        print(f"rvc-mlx: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
