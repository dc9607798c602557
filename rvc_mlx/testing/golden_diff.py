"""The regeneration diff page (`reports/golden-diff.html`): what `make golden` changed, for a reviewer.

Per regenerated case: the provenance that changed (input, weights, versions), and per tap old vs new stats, the
largest change relative to the tap's range and to its tolerance; taps added and removed; bitwise-unchanged taps
collapse into a count. Kept cases (oracle unchanged) are counted, not listed.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from rvc_mlx.testing.golden import CaseData, Staged, tensor_stats
from rvc_mlx.testing.tolerances import Policy


def _provenance(old: CaseData | None, new: CaseData) -> list[str]:
    """`field.key: old -> new` for each input / weights / versions entry that differs."""
    if old is None:
        return []
    out = []
    for field in ("input", "weights", "versions"):
        a, b = getattr(old, field) or {}, getattr(new, field) or {}
        out += [f"{field}.{k}: {a.get(k, 'absent')} -> {b.get(k, 'absent')}" for k in sorted(set(a) | set(b))
                if str(a.get(k)) != str(b.get(k))]
    return out


def case_diff(staged: Staged, policy: Policy) -> dict[str, Any]:
    """One regenerated case: provenance changes, changed / added / reshaped taps, removed taps, unchanged count."""
    old, new = staged.old, staged.data
    rows, unchanged = [], 0
    for info in new.ordered():
        b = new.value(info.name)
        if old is None or info.name not in old.taps:
            rows.append({"tap": info.name, "change": "added", "new": tensor_stats(b)})
            continue
        a = old.value(info.name)
        if a.shape != b.shape:
            rows.append({"tap": info.name, "change": f"shape {a.shape} -> {b.shape}", "old": tensor_stats(a),
                         "new": tensor_stats(b)})
            continue
        d = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
        if d == 0.0:
            unchanged += 1
            continue
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        rel = d / scale if scale else float("inf")
        row = {"tap": info.name, "change": "changed", "old": tensor_stats(a), "new": tensor_stats(b),
               "max_delta": d, "rel_range": rel}
        if info.kind == "tensor":  # the tolerance MLX's max_rel is held to at this tap
            limit = policy.rule(new.component, info.name).limit(float(info.torch32.get("max_rel", 0.0)))
            row["rel_tolerance"] = rel / limit if limit > 0 else float("inf")
        rows.append(row)
    removed = sorted(set(old.taps) - set(new.taps)) if old is not None else []
    return {"case": new.key, "status": staged.status, "summary": staged.delta.splitlines()[0],
            "provenance": _provenance(old, new), "rows": rows, "unchanged": unchanged, "removed": removed}


def _stats(s: dict[str, float] | None) -> str:
    return "" if not s else f"absmax {s['absmax']:.4g}, mean {s['mean']:.4g}, std {s['std']:.4g}"


def to_html(diffs: list[dict[str, Any]], kept: int) -> str:
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>rvc-mlx golden diff</title><style>"
           "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:90%}"
           "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}th{background:#eee}</style></head><body>",
           "<h1>Golden regeneration</h1>",
           f"<p>{len(diffs)} cases regenerated, {kept} kept (oracle unchanged).</p>"]
    for d in diffs:
        out.append(f"<h2>{html.escape(d['case'])} ({d['status']})</h2><p>{html.escape(d['summary'])}</p>")
        if d["provenance"]:
            out.append("<p>Provenance changed:</p><ul>" + "".join(f"<li>{html.escape(p)}</li>"
                                                                   for p in d["provenance"]) + "</ul>")
        out.append(f"<p>{d['unchanged']} taps bitwise unchanged" + (f"; removed: {html.escape(', '.join(d['removed']))}"
                                                                    if d["removed"] else "") + ".</p>")
        if d["rows"]:
            out.append("<table><tr><th>tap</th><th>change</th><th>old</th><th>new</th><th>max |new-old|</th>"
                       "<th>/ range</th><th>/ tolerance</th></tr>")
            for r in d["rows"]:
                nums = "".join(f"<td>{r[k]:.3g}</td>" if k in r else "<td></td>"
                               for k in ("max_delta", "rel_range", "rel_tolerance"))
                out.append(f"<tr><td>{html.escape(r['tap'])}</td><td>{html.escape(r['change'])}</td>"
                           f"<td>{_stats(r.get('old'))}</td><td>{_stats(r.get('new'))}</td>{nums}</tr>")
            out.append("</table>")
    return "\n".join(out + ["</body></html>"])


def write(path: str | Path, staged: dict[str, Staged], policy: Policy) -> Path:
    """Write the diff page of a regeneration's staged cases."""
    from rvc_mlx.outputs import atomic_write_bytes

    path = Path(path)
    diffs = [case_diff(s, policy) for _, s in sorted(staged.items()) if s.status != "kept"]
    kept = sum(s.status == "kept" for s in staged.values())
    atomic_write_bytes(path, to_html(diffs, kept).encode())
    return path
