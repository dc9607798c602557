"""`rvc-mlx check` and `rvc-mlx golden export`: the goldens for other implementations (docs/golden-format.md).

`check` needs numpy and safetensors only (no torch, no MLX); `golden export` reads the synthetic checkpoints with
torch (weights_only). Exit codes: 0 pass / written, 1 the dump fails the golden case, 2 unusable input (one line).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rvc_mlx.testing.components import GOLDEN


def _store_and_policy(golden_dir: Path):
    from rvc_mlx.testing.golden import GoldenStore
    from rvc_mlx.testing.tolerances import load_policy

    return GoldenStore(golden_dir), load_policy(Path(golden_dir) / "tolerances.toml")


def cmd_check(a: argparse.Namespace) -> int:
    from rvc_mlx.testing import foreign

    store, policy = _store_and_policy(a.golden_dir)
    names = foreign.NameMap.read(a.names) if a.names is not None else None
    layout: str | dict = a.layout if a.layout in foreign.LAYOUT_MODES else foreign.read_layout_file(a.layout)
    dump = foreign.load_dump(a.dump)
    key, cases = f"{a.component}/{a.case}", store.manifest()["cases"]
    if key not in cases:
        known = sorted(k for k in cases if k.startswith(f"{a.component}/"))
        raise foreign.DumpError(f"no golden case {key}; {a.component} has: {', '.join(known) or 'none'}")
    done = foreign.check(dump, a.component, a.case, store, policy, names, layout, label=a.dump.name)
    print(done.message())
    if a.report is not None:
        from rvc_mlx.testing import report

        origin = {"versions": {"dump": str(a.dump)}, "environment": {"implementation": f"dump {a.dump}"}}
        print(f"report: {a.report} and {report.write(a.report, [done.result], policy, origin=origin)}")
    return 0 if done.passed else 1


def cmd_export(a: argparse.Namespace) -> int:
    from rvc_mlx.testing import bundle

    store, policy = _store_and_policy(a.golden_dir)
    if a.all:
        if a.component or a.case:
            raise ValueError("golden export --all takes no COMPONENT CASE")
        dirs = bundle.export_all(a.output, store, policy)
        print(f"wrote {len(dirs)} case bundles under {a.output}")
        return 0
    if not (a.component and a.case):
        raise ValueError("golden export needs COMPONENT CASE, or --all")
    out = bundle.export(a.component, a.case, a.output, store, policy)
    print(f"wrote {out} ({', '.join(bundle.FILES)})")
    return 0


def add_parsers(sub) -> None:
    c = sub.add_parser("check", help="judge another implementation's activation dump against a golden case")
    c.add_argument("dump", type=Path, help="safetensors file of activations named by tap (docs/golden-format.md)")
    c.add_argument("component", help="rmvpe, hubert, synth, crepe, fcpe or pipeline")
    c.add_argument("case", help="golden case name (golden/cases.toml)")
    c.add_argument("--names", type=Path, default=None, help="TOML map of golden tap names to the dump's")
    c.add_argument("--layout", default="torch",
                   help="torch (default), mlx (channels-last where MLX is), or a TOML file of tap glob = layout")
    c.add_argument("--report", type=Path, default=None, help="write the JSON report here (+ .html beside)")
    c.add_argument("--golden-dir", type=Path, default=GOLDEN)
    c.set_defaults(func=cmd_check)
    g = sub.add_parser("golden", help="golden files for other implementations")
    gs = g.add_subparsers(dest="golden_command", required=True)
    e = gs.add_parser("export", help="write case bundles (inputs, weights, expected taps, limits)")
    e.add_argument("component", nargs="?")
    e.add_argument("case", nargs="?")
    e.add_argument("--all", action="store_true", help="a bundle per golden case, in DIR/<component>/<case>/")
    e.add_argument("-o", "--output", type=Path, required=True)
    e.add_argument("--golden-dir", type=Path, default=GOLDEN)
    e.set_defaults(func=cmd_export)


def main(argv: list[str]) -> int:
    from rvc_mlx.testing.foreign import DumpError
    from rvc_mlx.testing.golden import GoldenError
    from rvc_mlx.testing.tolerances import ToleranceError

    p = argparse.ArgumentParser(prog="rvc-mlx", description="RVC inference on MLX: goldens for other ports")
    add_parsers(p.add_subparsers(dest="command", required=True))
    a = p.parse_args(argv)
    try:
        return a.func(a)
    except (DumpError, GoldenError, ToleranceError, ValueError, KeyError) as e:
        text = str(e).strip("'\"")
        print(f"rvc-mlx: {text.splitlines()[0] if text else type(e).__name__}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"rvc-mlx: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 2
