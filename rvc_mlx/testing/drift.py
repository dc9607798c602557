"""Drift against the last accepted run: how a change moved MLX's error per tap, and speed per benchmark.

A baseline is a parity report (`reports/baseline.json`, written by `make baseline`). Cases are matched by
component, case, path judged and execution; taps by name. For each tap the ratio new/old of MLX's max_rel and
rmse_rel (and of its worst MLX/limit) is reported when it moved by more than REPORT_RATIO either way, unless the
error stays in the noise: below NOISE x its tolerance in both runs (there a 2x move is a few ulps).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rvc_mlx.testing.environment import differences

REPORT_RATIO = 1.5  # "grew or shrank by more than 1.5x"
NOISE = 0.1  # errors under 10% of the limit in both runs are not drift
METRICS = ("max_rel", "rmse_rel")


@dataclass
class Move:
    """One tap whose MLX error moved: the metric that moved most, its old and new value, and the limit."""

    case: str  # component/case (path, execution)
    tap: str
    metric: str
    old: float
    new: float
    limit: float

    @property
    def ratio(self) -> float:
        return self.new / self.old if self.old > 0 else math.inf

    def line(self) -> str:
        return (f"{self.case}: {self.tap} {self.metric} {self.old:.3g} -> {self.new:.3g} ({self.ratio:.2f}x; "
                f"limit {self.limit:.3g})")


def load_baseline(path: str | Path) -> dict[str, Any] | None:
    """The baseline report, or None when there is none; an unreadable one is an error naming the fix."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable parity report ({e}); accept a run again with `make baseline`") \
            from None
    if "components" not in data:
        raise ValueError(f"{path}: not a parity report (no components); accept a run again with `make baseline`")
    return data


def case_key(c: dict[str, Any]) -> str:
    return f"{c['component']}/{c['case']} ({c['path']}, {c['execution']})"


def cases(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {case_key(c): c for comp in report.get("components", {}).values() for c in comp["cases"]}


def _float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def tap_moves(key: str, new: dict[str, Any], old: dict[str, Any]) -> list[Move]:
    """The moves of one case's taps (both runs judged the tap; tensor metrics with tolerances only)."""
    before = {t["name"]: t for t in old.get("taps", [])}
    out = []
    for t in new.get("taps", []):
        o = before.get(t["name"])
        if o is None:
            continue
        best = None
        for m in METRICS:
            limit = _float((t.get("tolerance") or {}).get(m))
            a, b = _float((o.get("metrics") or {}).get(m)), _float((t.get("metrics") or {}).get(m))
            if not (limit > 0 and math.isfinite(a) and math.isfinite(b)) or max(a, b) < NOISE * limit:
                continue
            move = Move(key, t["name"], m, a, b, limit)
            r = move.ratio if b >= a else (a / b if b > 0 else math.inf)
            if best is None or r > best[0]:
                best = (r, move)
        if best is not None and best[0] > REPORT_RATIO:
            out.append(best[1])
    return out


def compare(report: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """The drift section: environment differences, grown and shrunk taps (largest growth first), speed."""
    old = cases(baseline)
    moves, matched = [], 0
    for key, c in cases(report).items():
        if key in old:
            matched += 1
            moves += tap_moves(key, c, old[key])
    grown = sorted((m for m in moves if m.new > m.old), key=lambda m: -m.ratio)
    shrunk = sorted((m for m in moves if m.new < m.old), key=lambda m: m.ratio)
    speed = []
    before = {b["group"]: b for b in baseline.get("benchmarks", [])}
    for b in report.get("benchmarks", []):
        o = before.get(b["group"])
        if o and o.get("mlx_s") and b.get("mlx_s"):
            speed.append({"group": b["group"], "old_s": o["mlx_s"], "new_s": b["mlx_s"],
                          "ratio": b["mlx_s"] / o["mlx_s"]})
    return {"cases_compared": matched, "environment": differences(baseline.get("environment", {}),
                                                                  report.get("environment", {})),
            "grown": [m.__dict__ | {"ratio": m.ratio} for m in grown],
            "shrunk": [m.__dict__ | {"ratio": m.ratio} for m in shrunk], "speed": speed}


def exceeding(result_json: dict[str, Any], baseline: dict[str, Any], factor: float) -> list[Move]:
    """Taps of one case whose error grew by more than `factor` against the baseline (for --fail-on-drift)."""
    old = cases(baseline).get(case_key(result_json))
    if old is None:
        return []
    return [m for m in tap_moves(case_key(result_json), result_json, old) if m.new > m.old and m.ratio > factor]


def to_html(section: dict[str, Any] | None) -> str:
    """The report's opening "changes since baseline" section."""
    import html

    head = "<h2>Changes since baseline</h2>"
    if section is None:
        return f"{head}<p>No baseline: accept a run with <code>make baseline</code> to see what a change moves.</p>"
    out = [head]
    if section["environment"]:
        out.append("<p>The baseline ran in another environment: "
                   + "; ".join(html.escape(d) for d in section["environment"]) + "</p>")
    if not section["grown"] and not section["shrunk"]:
        out.append(f"<p>Unchanged: no tap's MLX error moved by more than {REPORT_RATIO}x "
                   f"({section['cases_compared']} cases compared).</p>")
    for title, rows in (("grew", section["grown"]), ("shrank", section["shrunk"])):
        if rows:
            out.append(f"<p>{len(rows)} taps whose MLX error {title} by more than {REPORT_RATIO}x:</p><table>"
                       "<tr><th>case</th><th>tap</th><th>metric</th><th>baseline</th><th>now</th><th>ratio</th>"
                       "<th>limit</th></tr>")
            out += [f"<tr><td>{html.escape(r['case'])}</td><td>{html.escape(r['tap'])}</td><td>{r['metric']}</td>"
                    f"<td>{r['old']:.3g}</td><td>{r['new']:.3g}</td><td>{r['ratio']:.2f}x</td>"
                    f"<td>{r['limit']:.3g}</td></tr>" for r in rows]
            out.append("</table>")
    if section["speed"]:
        moved = [s for s in section["speed"] if not 1 / REPORT_RATIO < s["ratio"] < REPORT_RATIO]
        out.append(f"<p>Speed: {len(section['speed'])} benchmarks compared; "
                   + ("; ".join(f"{html.escape(s['group'])} {s['ratio']:.2f}x" for s in moved) or "none moved by "
                      f"more than {REPORT_RATIO}x") + "</p>")
    return "\n".join(out)
