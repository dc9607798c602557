"""`make precision`: run the precision study, print its table, save reports/precision.json + .html (with error
vs depth per precision) and write the searched plans to golden/precision.toml (atomically).

    python -m rvc_mlx.testing.precision_report [--subjects hubert,rmvpe] [--no-search] [--out reports/precision]
    python -m rvc_mlx.testing.precision_report --combine a.json b.json   # studies run apart (e.g. in parallel)
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from rvc_mlx.precision import PLAN_FILE, REDUCED, dtype_name
from rvc_mlx.testing import precision_study as ps
from rvc_mlx.testing.report import CSS, depth_png, figure, json_safe

COLUMNS = ps.PRECISIONS


def _domain_cell(subj: dict, p: dict) -> str:
    d = p["domain"]
    if subj["domain"] == "pitch":
        return f"p99 {d['cents_p99']:.2f} c, voicing {d['voicing_agreement']:.3f}"
    if subj["domain"] == "audio":
        return f"SNR {d['snr_db']:.1f} dB, MR-STFT {d['mrstft']:.4f}"
    return f"SNR {d['snr_db']:.1f} dB"


def _keep_count(keep: Any) -> int | str:
    """How many entries a plan keeps in float32; the pipeline's per model ('all': the model whole)."""
    if isinstance(keep, dict):
        return "/".join("all" if list(v) == list(ps.WHOLE) else str(len(v)) for v in keep.values())
    return len(keep)


def _keep_text(keep: Any) -> str:
    if keep is None:
        return "no plan meets the target"
    if isinstance(keep, dict):
        return "; ".join(f"{m}: " + ("all (the model in float32)" if list(k) == list(ps.WHOLE) else
                                     ", ".join(k) or "nothing") for m, k in keep.items())
    return ", ".join(keep) or "nothing"


def rows(report: dict) -> list[dict]:
    """One row per subject and precision: the table `make precision` prints and the HTML shows."""
    out = []
    for key, subj in report["subjects"].items():
        base = subj["precisions"].get("float32", {})
        for name in COLUMNS:
            p = subj["precisions"].get(name)
            if p is None and name.split()[-1] not in subj["precisions"]:
                continue  # a dtype this study did not run (--dtypes)
            if p is None:
                out.append({"subject": key, "precision": name, "missing": True,
                            "why": "no plan meets the target" if name.startswith("plan") else "not run"})
                continue
            worst = sorted(p["taps"], key=lambda t: -t["rmse_rel"])[:1]
            out.append({"subject": key, "precision": name, "domain": _domain_cell(subj, p), "meets": p["meets"],
                        "kept": _keep_count(p["keep"]), "seconds": p["seconds"], "peak_mib": p["peak_mib"],
                        "speed_vs_fp32": p["seconds"] / base["seconds"] if base.get("seconds") else None,
                        "worst_tap": f"{worst[0]['name']} ({worst[0]['rmse_rel']:.1e})" if worst else ""})
    return out


def text_table(report: dict) -> str:
    env = report["environment"]
    lines = [f"precision study ({env.get('cpu', '')}, {env.get('cores', '?')} cores, {env.get('execution', '')}); "
             "targets: " + "; ".join(f"{k}: {v}" for k, v in report["targets"].items()),
             f"{'subject':<11} {'precision':<14} {'domain metric':<34} {'target':<6} {'fp32 kept':>9} "
             f"{'s':>8} {'x fp32':>7} {'peak MiB':>9}  worst tap (rmse_rel)"]
    for r in rows(report):
        if r.get("missing"):
            lines.append(f"{r['subject']:<11} {r['precision']:<14} {r['why']}")
            continue
        ratio = f"{r['speed_vs_fp32']:.2f}" if r["speed_vs_fp32"] else ""
        verdict = "meets" if r["meets"] else "FAILS"
        lines.append(f"{r['subject']:<11} {r['precision']:<14} {r['domain']:<34} {verdict:<6} {r['kept']:>9} "
                     f"{r['seconds']:>8.3f} {ratio:>7} {r['peak_mib']:>9.0f}  {r['worst_tap']}")
    lines.append("Half precision runs on MLX's CPU backend without BLAS or the C++ kernels: it is slower here than "
                 "float32 (the 'x fp32' column); the speed it buys is on Apple GPUs.")
    return "\n".join(lines)


def _depth_plot(key: str, subj: dict) -> str:
    fig, ax = figure(3.0)
    for name in COLUMNS:
        p = subj["precisions"].get(name)
        if p and p["taps"]:
            ax.semilogy([t["order"] for t in p["taps"]], [max(t["rmse_rel"], 1e-12) for t in p["taps"]], ".-",
                        ms=3, lw=0.6, label=name)
    return depth_png(fig, ax, "rms |err| / rms |ref| vs fp64", f"{key} ({subj['case']}): error vs depth")


def to_html(report: dict) -> str:
    return "\n".join([f"<!doctype html><html><head><meta charset='utf-8'><title>rvc-mlx precision</title>"
                      f"<style>{CSS}</style></head><body><h1>rvc-mlx precision study</h1>", *section(report),
                      "</body></html>"])


def section(report: dict, level: int = 2) -> list[str]:
    """The study as HTML: the table, each subject's plans, worst layers and error vs depth (also a section of
    `make parity`'s report under --precision)."""
    h = f"h{level}"
    out = ["<p>Targets: " + "; ".join(f"{k}: {html.escape(v)}" for k, v in report["targets"].items()) + ". Errors "
           "against the float64 oracle; a plan keeps the fewest layers in float32 (worst first, by the damage each "
           "does alone in reduced precision, then pruned) that meet the target, checked by running it.</p>",
           "<p>Environment: " + "; ".join(f"{k} {html.escape(str(v))}" for k, v in report["environment"].items())
           + "</p><p>Half precision runs on MLX's CPU backend without BLAS or the C++ kernels: slower here than "
           "float32 (the speed it buys is on Apple GPUs).</p>",
           "<table><tr><th>subject</th><th>precision</th><th>domain metric</th><th>target</th><th>kept fp32</th>"
           "<th>s</th><th>&times; fp32</th><th>peak MiB</th><th>worst tap</th></tr>"]
    for r in rows(report):
        if r.get("missing"):
            out.append(f"<tr><td>{r['subject']}</td><td>{r['precision']}</td><td colspan=7>{r['why']}</td></tr>")
            continue
        cls = "pass" if r["meets"] else "fail"
        ratio = f"{r['speed_vs_fp32']:.2f}" if r["speed_vs_fp32"] else ""
        out.append(f"<tr><td>{r['subject']}</td><td>{r['precision']}</td><td>{html.escape(r['domain'])}</td>"
                   f"<td class='{cls}'>{'meets' if r['meets'] else 'FAILS'}</td><td>{r['kept']}</td>"
                   f"<td>{r['seconds']:.3f}</td><td>{ratio}</td><td>{r['peak_mib']:.0f}</td>"
                   f"<td>{html.escape(r['worst_tap'])}</td></tr>")
    out.append("</table>")
    for key, subj in report["subjects"].items():
        out.append(f"<{h}>{key}</{h}>")
        for dtype, plan in subj["plans"].items():
            text = _keep_text(plan.get("keep"))
            out.append(f"<p>{dtype} plan keeps in float32: {html.escape(text)} ({plan['trials']} trial runs)</p>")
            if "models_plans_snr_db" in plan:
                out.append(f"<p>{dtype}: the models' own plans together give SNR {plan['models_plans_snr_db']:.1f} dB "
                           "end to end (each meets its own target; the NSF phase integrates the F0 error)</p>")
        for dtype, ranking in subj["ranking"].items():
            top = ", ".join(f"{r['name']} {r.get('damage', r['rmse_rel']):.1e}" for r in ranking[:5])
            out.append(f"<p>{dtype} most damaging layers (output error with that layer alone in {dtype}): "
                       f"{html.escape(top)}</p>")
        if any(p["taps"] for p in subj["precisions"].values()):
            out.append(f"<img alt='{key} error vs depth' src='data:image/png;base64,{_depth_plot(key, subj)}'>")
    return out


# ----------------------------------------------------------------------------------------------- plan file
def plan_toml(report: dict) -> str:
    """golden/precision.toml: per subject and reduced dtype, the modules kept in float32 and what the plan
    measured when written."""
    lines = ["# Mixed-precision plans, written by `make precision` (rvc_mlx/testing/precision_study.py): per model",
             "# and reduced dtype, the fewest modules (worst first by the error each adds alone) to keep in float32",
             "# so that the domain target holds against the float64 oracle. Applied by rvc_mlx.precision.load_plan",
             "# (`from_checkpoint(dtype=...)`); the model's FLOAT32 steps come on top. [pipeline.*] keeps per model",
             "# what the end-to-end audio target needs (\"*\": the whole model), applied by Pipeline.load(dtype=)",
             "# and `rvc-mlx convert --dtype` (precision.pipeline_plan; a model it does not name: its own plan).", ""]
    for key, subj in report["subjects"].items():
        for dtype in REDUCED:
            plan = subj["plans"].get(dtype)
            if plan is None or plan.get("keep") is None:
                continue
            p = subj["precisions"].get(f"plan {dtype}", {})
            d = p.get("domain", {})
            measured = {k: d[k] for k in ("cents_p99", "voicing_agreement", "snr_db", "mrstft") if k in d}
            lines.append(f"[{key if re.fullmatch(r'[A-Za-z0-9_-]+', key) else json.dumps(key)}.{dtype}]")
            lines.append(f"target = {json.dumps(subj['target'])}")
            lines.append(f"case = {json.dumps(subj['domain_case'])}")
            lines.append("measured = { " + ", ".join(f"{k} = {json_safe(round(v, 4))}" for k, v in measured.items())
                         + " }")
            keeps = plan["keep"] if isinstance(plan["keep"], dict) else {"": plan["keep"]}
            for model, keep in keeps.items():
                name = f"keep.{model}" if model else "keep"
                lines.append(f"{name} = [" + "".join(f"\n  {json.dumps(k)}," for k in keep) + ("\n]" if keep else "]"))
            lines.append("")
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make precision", description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", help="comma-separated subset of " + ", ".join(s.key for s in ps.SUBJECTS))
    ap.add_argument("--dtypes", default=",".join(REDUCED), help="reduced dtypes to study (comma-separated; the "
                    "plan file keeps the others' plans): run float16 and bfloat16 apart, then --combine")
    ap.add_argument("--no-search", action="store_true", help="run the committed plans instead of searching")
    ap.add_argument("--out", default="reports/precision", help="report path stem (.json and .html)")
    ap.add_argument("--plans", default=str(PLAN_FILE), help="the plan file to read and (after a search) write")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds per precision (median)")
    ap.add_argument("--weights-dir", type=Path, default=None, help="real checkpoints (as for pytest --weights-dir): "
                    "the study then runs against a live float64 oracle on them")
    ap.add_argument("--combine", nargs="+", type=Path, metavar="JSON", help="merge saved study reports (subjects "
                    "run in separate processes) into one table and report at --out; runs nothing")
    args = ap.parse_args(argv)
    if args.combine:
        return _combine(args.combine, Path(args.out))
    keys = args.subjects.split(",") if args.subjects else None
    for k in keys or ():
        ps.subject(k)  # an unknown name: one line, before any work
    dtypes = [dtype_name(d) for d in args.dtypes.split(",")]
    start = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(report: dict) -> None:
        write_atomic(out.with_suffix(".json"), json.dumps(json_safe(report), indent=1, allow_nan=False))
        write_atomic(out.with_suffix(".html"), to_html(report))
        if not args.no_search:
            write_atomic(Path(args.plans), _merge_plans(Path(args.plans), report))

    report = ps.run(keys, search=not args.no_search, plan_path=Path(args.plans), timing_rounds=args.rounds,
                    weights_dir=args.weights_dir, done=save, dtypes=dtypes,
                    log=lambda s: print(f"[{time.perf_counter() - start:6.0f} s] {s}", file=sys.stderr, flush=True))
    print(text_table(report))
    print(f"saved {out.with_suffix('.json')} and .html" + ("" if args.no_search else f"; plans in {args.plans}"))
    return 0


def _numbers(x: Any) -> Any:
    """json_safe undone: its 'nan' / 'inf' / '-inf' strings back to floats."""
    if isinstance(x, str) and x in ("nan", "inf", "-inf"):
        return float(x)
    if isinstance(x, dict):
        return {k: _numbers(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_numbers(v) for v in x]
    return x


def _combine(paths: list[Path], out: Path) -> int:
    """One report from several: the first one's environment, every subject in the study's order."""
    reports = [_numbers(json.loads(p.read_text())) for p in paths]
    order = [s.key for s in ps.SUBJECTS]
    subjects: dict[str, dict] = {}
    for r in reports:
        for k, v in r["subjects"].items():  # one subject studied in several (e.g. one dtype each): merged
            if k in subjects:
                for part in ("ranking", "plans", "precisions"):
                    subjects[k][part] = {**subjects[k][part], **v[part]}
            else:
                subjects[k] = v
    report = {**reports[0], "subjects": dict(sorted(subjects.items(), key=lambda kv: order.index(kv[0])))}
    report["plans"] = {}
    for r in reports:
        for k, v in r.get("plans", {}).items():
            report["plans"][k] = {**report["plans"].get(k, {}), **v}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out.with_suffix(".json"), json.dumps(json_safe(report), indent=1, allow_nan=False))
    write_atomic(out.with_suffix(".html"), to_html(report))
    print(text_table(report))
    print(f"saved {out.with_suffix('.json')} and .html")
    return 0


def _merge_plans(path: Path, report: dict) -> str:
    """The plan file with the plans studied now replaced and the others (subjects, or dtypes of a subject,
    studied apart) kept as they were."""
    import tomllib

    old = tomllib.loads(path.read_text()) if path.is_file() else {}
    studied = {(k, d) for k, subj in report["subjects"].items() for d in REDUCED
               if d in subj["plans"] or d in subj["precisions"]}  # a dtype this study ran
    kept = {"subjects": {}}
    for key, dtypes in old.items():
        kept["subjects"][key] = {"target": "", "domain_case": "", "plans": {}, "precisions": {}}
        for dtype, entry in dtypes.items():
            if (key, dtype) in studied:
                continue
            kept["subjects"][key]["target"] = entry.get("target", "")
            kept["subjects"][key]["domain_case"] = entry.get("case", "")
            keep = entry.get("keep", [])
            kept["subjects"][key]["plans"][dtype] = {"keep": {m: list(k) for m, k in keep.items()}
                                                     if isinstance(keep, dict) else list(keep)}
            kept["subjects"][key]["precisions"][f"plan {dtype}"] = {"domain": entry.get("measured", {})}
    merged = {"subjects": kept["subjects"]}
    for key, subj in report["subjects"].items():
        old_subj = merged["subjects"].get(key, {"plans": {}, "precisions": {}})
        merged["subjects"][key] = {**subj, "plans": {**old_subj["plans"], **subj["plans"]},
                                   "precisions": {**old_subj["precisions"], **subj["precisions"]}}
    order = [s.key for s in ps.SUBJECTS]
    merged["subjects"] = dict(sorted(merged["subjects"].items(), key=lambda kv: order.index(kv[0])
                                     if kv[0] in order else len(order)))
    return plan_toml(merged)


if __name__ == "__main__":
    sys.exit(main())
