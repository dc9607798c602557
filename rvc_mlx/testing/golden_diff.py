"""The regeneration diff page (`reports/golden-diff.html`): what `make golden` changed, for a reviewer.

Per regenerated case: the provenance that changed (input, weights, versions), and per tap old vs new stats, the
largest change relative to the tap's range and to its tolerance; taps added and removed; bitwise-unchanged taps
collapse into a count. Kept cases (oracle unchanged) are counted, not listed.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from rvc_mlx.testing.golden import CaseData, Staged, tap_changes, tensor_stats
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
    changes, removed = tap_changes(old, new)
    rows = []
    for c in changes:
        if c.change == "added":
            rows.append({"tap": c.name, "change": "added", "new": tensor_stats(c.new)})
        elif c.change == "shape":
            rows.append({"tap": c.name, "change": f"shape {c.old.shape} -> {c.new.shape}", "old": tensor_stats(c.old),
                         "new": tensor_stats(c.new)})
        elif c.change == "changed":
            rel = c.max_delta / c.scale if c.scale else float("inf")
            row = {"tap": c.name, "change": "changed", "old": tensor_stats(c.old), "new": tensor_stats(c.new),
                   "max_delta": c.max_delta, "rel_range": rel}
            info = new.taps[c.name]
            if info.kind == "tensor":  # the tolerance MLX's max_rel is held to at this tap
                limit = policy.rule(new.component, c.name).limit(float(info.torch32.get("max_rel", 0.0)))
                row["rel_tolerance"] = rel / limit if limit > 0 else float("inf")
            rows.append(row)
    unchanged = sum(c.change == "same" for c in changes)
    return {"case": new.key, "status": staged.status, "summary": staged.delta.splitlines()[0],
            "provenance": _provenance(old, new), "rows": rows, "unchanged": unchanged, "removed": sorted(removed)}


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
