"""Parity report: `parity.json` (every tap of every case, machine-readable) and a self-contained
`parity.html` (summary per component, per-tap tables, error-vs-depth plots embedded as PNG, benchmarks)."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from rvc_mlx.testing import drift
from rvc_mlx.testing.compare import CaseResult, TapResult
from rvc_mlx.testing.environment import environment
from rvc_mlx.testing.golden import versions
from rvc_mlx.testing.tolerances import Policy

SHORT, LONG = 10, 60  # the benchmark durations (seconds) whose cost growth the report shows


def json_safe(x: Any) -> Any:
    """JSON-safe numbers: non-finite floats become strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def tap_json(t: TapResult) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": t.name, "module_type": t.module_type, "kind": t.kind, "order": t.order, "shape": list(t.shape),
        "status": t.status, "passed": t.passed, "metrics": t.mlx, "torch_fp32": t.torch,
        "tolerance": {c.metric: c.limit for c in t.checks},
    }
    if t.rule is not None:
        d["rule"] = {"K": t.rule.K, "floor": t.rule.floor, "reason": t.rule.reason}
    if t.detail:
        d["detail"] = t.detail
    if t.where:
        d["where"] = t.where
    if t.pitch is not None:
        d["pitch"] = t.pitch
    if t.local is not None:
        d["teacher_forced"] = t.local
    d["implementation"] = list(t.impl)
    return d


def case_json(r: CaseResult) -> dict[str, Any]:
    b = r.blame
    return {
        "component": r.component, "case": r.case, "source": r.source, "path": r.path, "execution": r.execution,
        "passed": r.passed, "taps_total": len(r.taps), "taps_failed": len(r.failing),
        "taps_left_to_layer_by_layer": r.unjudged, "blame": r.blame_line() if b else None,
        "blame_tap": b.name if b else None, "localisation": r.localisation_line(), "problems": r.problems,
        "splits": r.splits, "input": json_safe(r.input), "weights": r.weights, "extra": json_safe(r.extra),
        "taps": [tap_json(t) for t in r.taps],
    }


def bench_table(bench: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Pair MLX and torch benchmarks of the same group into ratio rows (+ RTF, peak memory, op classes)."""
    if not bench:
        return []
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for b in bench.get("benchmarks", []):
        info = b.get("extra_info") or {}
        impl = info.get("impl") or ("mlx" if "mlx" in b["name"] else "torch")
        groups.setdefault(b.get("group") or b["name"], {})[impl] = {"median": b["stats"]["median"], **info}
    rows = []
    for group, d in sorted(groups.items()):
        m, t = d.get("mlx", {}), d.get("torch", {})
        row = {"group": group, "mlx_s": m.get("median"), "torch_s": t.get("median"),
               "seconds": m.get("seconds", t.get("seconds"))}
        if m.get("median") and t.get("median"):
            row["mlx_over_torch"] = m["median"] / t["median"]
        for impl, e in (("mlx", m), ("torch", t)):
            if e.get("median") and e.get("seconds"):
                row[f"{impl}_rtf"] = e["median"] / e["seconds"]
            if e.get("peak_memory_bytes") is not None:
                row[f"{impl}_peak"] = e["peak_memory_bytes"]
            if e.get("op_classes"):
                row[f"{impl}_op_classes"] = e["op_classes"]
        rows.append(row)
    by_group = {r["group"]: r for r in rows}
    for r in rows:  # cost growth: the 60-second entry against 6x the 10-second entry of the same benchmark
        if r.get("seconds") == LONG and r["group"].endswith(f" {LONG}s"):
            short = by_group.get(r["group"].removesuffix(f"{LONG}s") + f"{SHORT}s")
            for impl in ("mlx", "torch"):
                if short and short.get(f"{impl}_s") and r.get(f"{impl}_s"):
                    r[f"{impl}_vs_linear"] = r[f"{impl}_s"] / (LONG // SHORT * short[f"{impl}_s"])
    return rows


def build(results: list[CaseResult], policy: Policy, bench: dict[str, Any] | None = None,
          baseline: dict[str, Any] | None = None, origin: dict[str, Any] | None = None,
          precision: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report's data; `origin` = the versions and environment the cases ran under when that was another
    process (an xdist worker's), else this one's."""
    origin = origin or {"versions": versions(), "environment": environment()}
    comps: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        comps.setdefault(r.component, []).append(case_json(r))
    out = json_safe({
        "tool": "rvc-mlx parity harness",
        "versions": origin["versions"],
        "environment": origin["environment"],
        "policy": {"K": policy.K, "floor": policy.floor, "metrics": list(policy.metrics),
                   "pitch": {"cents_p99": policy.pitch.cents_p99,
                             "voicing_agreement": policy.pitch.voicing_agreement},
                   "overrides": [o.__dict__ for o in policy.overrides]},
        "summary": {"cases": len(results), "passed": sum(r.passed for r in results),
                    "failed": sum(not r.passed for r in results)},
        "components": {k: {"cases": v} for k, v in comps.items()},
        "benchmarks": bench_table(bench),
    })
    out["drift"] = drift.compare(out, baseline) if baseline is not None else None
    if precision is not None:  # --precision: the committed plans' study (rvc_mlx.testing.precision_study)
        out["precision"] = json_safe(precision)
    return out


# ----------------------------------------------------------------------------------------------- HTML
def figure(height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(10, height), dpi=90)


def _png(fig) -> str:
    """Render and close a figure; base64 PNG for an <img> data URI."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _depth_plot(r: CaseResult) -> str:
    """PNG (base64) of max_rel error vs tap order: MLX, torch fp32, and the tolerance."""
    taps = [t for t in r.taps if t.checks]
    fig, ax = figure(3.2)
    if taps:
        xs = [t.order for t in taps]
        get = lambda t, attr: next((getattr(c, attr) for c in t.checks if c.metric == "max_rel"), float("nan"))  # noqa: E731
        floor = 1e-12
        ax.semilogy(xs, [max(get(t, "torch"), floor) for t in taps], ".", ms=3, label="torch fp32 vs fp64")
        ax.semilogy(xs, [max(get(t, "value"), floor) for t in taps], ".", ms=3, label="MLX fp32 vs fp64")
        ax.semilogy(xs, [get(t, "limit") for t in taps], "-", lw=0.8, color="gray", label="tolerance")
        bad = [t for t in taps if not t.passed]
        if bad:
            ax.semilogy([t.order for t in bad], [max(get(t, "value"), floor) for t in bad], "rx", label="failing")
    return depth_png(fig, ax, "max |err| / max |ref|", f"{r.key}: error vs depth")


def depth_png(fig, ax, ylabel: str, title: str) -> str:
    """An error-vs-depth figure (x: tap execution order) labelled, legended and rendered (base64 PNG)."""
    ax.set_xlabel("tap (execution order)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    return _png(fig)


def _weights_kind(r) -> str:
    """Accuracy vs truth means something only for trained weights (packaged, or a user's --weights-dir)."""
    w = r.weights or {}
    if "package" in w:
        return f"trained weights from {html.escape(str(w['package']))}"
    if "generator" in w:
        return "synthetic weights: accuracy not meaningful"
    return "user-supplied weights"


def _f0_plot(name: str, d: dict[str, Any]) -> str:
    """PNG (base64) of F0 over frames: truth, reference and MLX."""
    import numpy as np

    fig, ax = figure(2.8)
    for key, style, label in (("f0_truth", "-", "truth"), ("f0_reference", "o", "reference (float64 twin)"),
                              ("f0_mlx", ".", "MLX")):
        y = np.asarray(d[key], dtype=float)
        ax.plot(np.where(y > 0, y, np.nan), style, ms=3, label=label)
    ax.set_xlabel("frame (hop 160)")
    ax.set_ylabel("F0 (Hz)")
    ax.set_title(name)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3g}"
    if isinstance(x, str) and x in ("inf", "-inf", "nan"):
        return x
    return html.escape(str(x))


CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}
.pass{color:#176b2c}.fail{color:#b00020;font-weight:bold}
details{margin:.4em 0} summary{cursor:pointer;font-weight:600}
code{background:#f4f4f4;padding:0 3px}
"""


def to_html(report: dict[str, Any], results: list[CaseResult]) -> str:
    s = report["summary"]
    p = report["policy"]
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>rvc-mlx parity</title><style>{CSS}</style>"
           "</head><body>",
           "<h1>rvc-mlx parity report</h1>",
           drift.to_html(report.get("drift")),
           f"<p>{s['passed']} of {s['cases']} cases pass. Policy: per tap, MLX fp32 error &le; K&times;torch fp32 "
           f"error + floor, K = {p['K']}, floor = {p['floor']:g} (relative), metrics {', '.join(p['metrics'])}; "
           f"pitch: cents p99 &le; {p['pitch']['cents_p99']}, voicing agreement &ge; "
           f"{p['pitch']['voicing_agreement']}. Overrides: {len(p['overrides'])}.</p>",
           "<p>Versions: " + ", ".join(f"{k} {html.escape(str(v))}" for k, v in report["versions"].items()) + "</p>",
           "<p>Environment (what decides float32 results): " + "; ".join(
               f"{k} {html.escape(str(v))}" for k, v in report.get("environment", {}).items()) + "</p>",
           "<p>Each case is judged on the <b>shipped</b> path (what users run: fused kernels, host-array stages, time "
           "chunks; at the taps it computes) and <b>layer by layer</b> (every golden tap), with the C++ kernels and "
           "on the pure-MLX path.</p>",
           "<h2>Summary</h2><table><tr><th>component</th><th>case</th><th>path judged</th><th>implementations</th>"
           "<th>source</th><th>taps</th><th>failed</th><th>worst MLX/limit</th><th>result</th>"
           "<th>first divergence</th></tr>"]
    for r in results:
        cls = "pass" if r.passed and not r.failing else "fail"
        out.append(f"<tr><td>{r.component}</td><td>{r.case}</td><td>{r.path}</td><td>{html.escape(r.execution)}</td>"
                   f"<td>{html.escape(r.source)}</td><td>{len(r.taps)}</td><td>{len(r.failing)}</td>"
                   f"<td>{worst_ratio(r):.2f}</td><td class='{cls}'>{'FAIL' if cls == 'fail' else 'PASS'}</td>"
                   f"<td>{html.escape(r.blame.describe()) if r.blame else ''}</td></tr>")
    out.append("</table>")
    if report.get("benchmarks"):
        out.extend(_bench_html(report["benchmarks"]))
    if report.get("precision"):
        from rvc_mlx.testing.precision_report import section

        out.append("<h2>Precision: float16, bfloat16 and the mixed-precision plans</h2>")
        out.extend(section(report["precision"], level=3))
    # one row per case and tap (a case checked by several tests appears once)
    truth_rows = list({(r.key, name): (r, name, d) for r in results
                       for name, d in r.extra.get("truth", {}).items()}.values())
    if truth_rows:
        out.append("<h2>Pitch vs the known F0 of the harmonic input</h2><table><tr><th>case</th><th>weights</th>"
                   "<th>raw pitch acc. MLX / ref.</th><th>raw chroma acc. MLX / ref.</th>"
                   "<th>voicing recall MLX / ref.</th><th>false alarm MLX / ref.</th></tr>")
        for r, name, d in truth_rows:
            m, ref = d["mlx"], d["reference"]
            cells = "".join(f"<td>{m[k]:.3f} / {ref[k]:.3f}</td>" for k in
                            ("raw_pitch_accuracy", "raw_chroma_accuracy", "voicing_recall", "voicing_false_alarm"))
            out.append(f"<tr><td>{html.escape(r.key)} {html.escape(name)}</td><td>{_weights_kind(r)}</td>{cells}</tr>")
        out.append("</table>")
    for r in results:
        out.append(f"<h2>{r.component} / {r.case} <small>({html.escape(r.label)})</small></h2>")
        out.append(f"<p class='{'fail' if r.failing or r.problems else 'pass'}'>{html.escape(r.blame_line())}</p>")
        if r.localisation_line():
            out.append(f"<p>{html.escape(r.localisation_line())}</p>")
        for problem in r.problems:
            out.append(f"<p class='fail'>{html.escape(problem)}</p>")
        if r.unjudged:
            out.append(f"<p>{r.unjudged} finer golden taps are computed only layer by layer (judged there).</p>")
        if r.splits:
            out.append("<p>Work split into pieces: " + ", ".join(f"{html.escape(k)}: {v}" for k, v in
                                                                 sorted(r.splits.items())) + "</p>")
        out.append(f"<img alt='error vs depth' src='data:image/png;base64,{_depth_plot(r)}'>")
        if "audio" in r.extra:  # final audio of an end-to-end case: MLX vs the reference
            a = r.extra["audio"]
            out.append(f"<p>final audio vs reference: SNR {_fmt(a['snr_db'])} dB, SI-SDR {_fmt(a['si_sdr_db'])} dB, "
                       f"multi-resolution STFT distance {_fmt(a['mrstft'])}, log-spectral distance "
                       f"{_fmt(a['lsd_db'])} dB, max |error| {_fmt(a['max_abs'])} over {a['length']} samples</p>")
        for name, d in r.extra.get("truth", {}).items():
            m, ref = d["mlx"], d["reference"]
            out.append(f"<p>{html.escape(name)} vs the input's known F0: raw pitch accuracy MLX "
                       f"{m['raw_pitch_accuracy']:.3f} / reference {ref['raw_pitch_accuracy']:.3f}, raw chroma "
                       f"{m['raw_chroma_accuracy']:.3f} / {ref['raw_chroma_accuracy']:.3f}, voicing recall "
                       f"{m['voicing_recall']:.3f} / {ref['voicing_recall']:.3f}, false alarm "
                       f"{m['voicing_false_alarm']:.3f} / {ref['voicing_false_alarm']:.3f} "
                       f"({_weights_kind(r)})</p>")
            out.append(f"<img alt='f0 vs truth' src='data:image/png;base64,{_f0_plot(r.key + ' ' + name, d)}'>")
        out.append(_tap_table(r))
    out.append("</body></html>")
    return "\n".join(out)


def _tap_table(r: CaseResult) -> str:
    teacher = any(t.local for t in r.taps)
    head = ("<tr><th>tap</th><th>type</th><th>shape</th><th>MLX max_rel</th><th>torch max_rel</th><th>limit</th>"
            "<th>MLX rmse_rel</th><th>torch rmse_rel</th><th>limit</th><th>pearson</th><th>SNR dB</th>"
            + ("<th>local MLX max_rel</th><th>local torch</th>" if teacher else "")
            + "<th>computed by</th><th>result</th></tr>")
    rows = []
    for t in r.taps:
        lim = {c.metric: c.limit for c in t.checks}
        cls = "pass" if t.passed else "fail"
        local = ""
        if teacher:
            lm = (t.local or {}).get("mlx", {}).get("max_rel", "")
            lt = (t.local or {}).get("torch", {}).get("max_rel", "")
            local = f"<td>{_fmt(lm)}</td><td>{_fmt(lt)}</td>"
        res = "ok" if t.passed else html.escape(t.detail or t.status)
        if t.pitch:
            res += f" (cents p99 {t.pitch['cents_p99']:.3g}, voicing {t.pitch['voicing_agreement']:.4f})"
        rows.append(
            f"<tr><td>{html.escape(t.name)}</td><td>{t.module_type}</td><td>{'x'.join(map(str, t.shape))}</td>"
            f"<td>{_fmt(t.mlx.get('max_rel', ''))}</td><td>{_fmt(t.torch.get('max_rel', ''))}</td>"
            f"<td>{_fmt(lim.get('max_rel', ''))}</td><td>{_fmt(t.mlx.get('rmse_rel', ''))}</td>"
            f"<td>{_fmt(t.torch.get('rmse_rel', ''))}</td><td>{_fmt(lim.get('rmse_rel', ''))}</td>"
            f"<td>{_fmt(t.mlx.get('pearson', ''))}</td><td>{_fmt(t.mlx.get('snr_db', ''))}</td>{local}"
            f"<td style='text-align:left'>{html.escape('; '.join(t.impl))}</td><td class='{cls}'>{res}</td></tr>")
    return (f"<details><summary>{len(r.taps)} taps</summary><table>{head}{''.join(rows)}</table></details>")


def worst_ratio(r: CaseResult) -> float:
    """The largest MLX error / limit over the case's bounded metrics (1.0 = at the tolerance)."""
    ratios = [c.value / c.limit for t in r.taps for c in t.checks if c.limit > 0]
    return max(ratios) if ratios else 0.0


def _mib(v: Any) -> str:
    return "" if v is None else f"{v / 2**20:.0f}"


def _bench_html(rows: list[dict[str, Any]]) -> list[str]:
    """Ratio table (median seconds, RTF, peak memory) and the per-op-class breakdown of profiled lengths."""
    out = ["<h2>Benchmarks (median seconds, same run)</h2><table><tr><th>benchmark</th><th>MLX</th><th>torch</th>"
           "<th>MLX / torch</th><th>RTF MLX</th><th>RTF torch</th><th>peak MiB MLX</th><th>peak MiB torch</th></tr>"]
    for b in rows:
        ratio = b.get("mlx_over_torch")
        cls = "" if ratio is None else (" class='pass'" if ratio <= 1.0 else " class='fail'")
        out.append(f"<tr><td>{html.escape(b['group'])}</td><td>{_fmt(b.get('mlx_s'))}</td>"
                   f"<td>{_fmt(b.get('torch_s'))}</td><td{cls}>{_fmt(ratio if ratio is not None else '')}</td>"
                   f"<td>{_fmt(b.get('mlx_rtf', ''))}</td><td>{_fmt(b.get('torch_rtf', ''))}</td>"
                   f"<td>{_mib(b.get('mlx_peak'))}</td><td>{_mib(b.get('torch_peak'))}</td></tr>")
    out.append("</table>")
    growth = [b for b in rows if b.get("mlx_vs_linear") is not None]
    if growth:
        out.append(f"<p>Cost growth, {LONG} s vs {LONG // SHORT} x the {SHORT} s cost (1.00 = linear): "
                   + "; ".join(f"{html.escape(b['group'][:-4])}: MLX {b['mlx_vs_linear']:.2f}, torch "
                               f"{b.get('torch_vs_linear', float('nan')):.2f}" for b in growth) + "</p>")
    profiled = [b for b in rows if b.get("mlx_op_classes") and b.get("torch_op_classes")]
    if profiled:
        from rvc_mlx.testing.profile import OP_CLASSES

        out.append("<h3>Where the time goes: seconds per op class, MLX / torch (one profiled forward; module self "
                   "time charged by module class)</h3><table><tr><th>benchmark</th>"
                   + "".join(f"<th>{c}</th>" for c in OP_CLASSES) + "<th>total</th></tr>")
        for b in profiled:
            m, t = b["mlx_op_classes"], b["torch_op_classes"]
            cells = "".join(f"<td>{m.get(c, 0):.3f} / {t.get(c, 0):.3f}</td>" for c in (*OP_CLASSES, "total"))
            out.append(f"<tr><td>{html.escape(b['group'])}</td>{cells}</tr>")
        out.append("</table>")
    return out


def write(path: str | Path, results: list[CaseResult], policy: Policy, bench: dict[str, Any] | None = None,
          baseline: dict[str, Any] | None = None, origin: dict[str, Any] | None = None,
          precision: dict[str, Any] | None = None) -> Path:
    """Write `path` (.json) and the HTML beside it; returns the HTML path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = build(results, policy, bench, baseline, origin, precision)
    path.write_text(json.dumps(report, indent=1, allow_nan=False))
    html_path = path.with_suffix(".html")
    html_path.write_text(to_html(report, results))
    return html_path
