"""The port's source keeps timings out of its comments and docstrings: measured times go stale, and belong in the
benchmarks and the README (the benchmark and profile code, which measure them, aside)."""

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rvc_mlx"
MEASURED_TIME = re.compile(r"[0-9.]+ ?(ms|us|s)\b")  # the grep the issue tracker checks with


def test_no_measured_time_in_the_ports_source():
    found = [f"{path.relative_to(PACKAGE.parent)}:{i}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*.py")) if path.stem not in ("bench", "profile")
             for i, line in enumerate(path.read_text().splitlines(), 1) if MEASURED_TIME.search(line)]
    assert not found, "timings belong in benchmarks and the README:\n" + "\n".join(found)
