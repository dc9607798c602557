"""Where a test run's time goes, per phase (unit tests, golden parity, the live oracle, precision plans,
benchmarks, the report): one line at the end of `make test` / `make parity`, so a slow phase is seen, not guessed."""

from __future__ import annotations

import time
from collections import defaultdict

ORDER = ("unit and pipeline tests", "golden parity", "live oracle + teacher forcing", "precision plans",
         "benchmarks", "slow checks", "report")


def phase(nodeid: str, keywords) -> str:
    """The phase a test belongs to, from its path and its `slow` marker."""
    slow = "slow" in keywords
    if nodeid.startswith("tests/bench/"):
        return "benchmarks"
    if nodeid.startswith(("tests/parity/", "tests/test_live_twin.py")):
        return "live oracle + teacher forcing" if slow else "golden parity"
    if slow:
        return "precision plans" if "precision" in nodeid.split("::")[0] else "slow checks"
    return "unit and pipeline tests"


def clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"


class Phases:
    """Seconds per phase (setup + call + teardown of each test; under xdist summed over the workers) and the
    run's wall time."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.seconds: dict[str, float] = defaultdict(float)

    def add(self, nodeid: str, keywords, seconds: float) -> None:
        self.seconds[phase(nodeid, keywords)] += seconds

    def timed(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds

    def line(self) -> str:
        parts = [f"{name} {clock(self.seconds[name])}" for name in ORDER if self.seconds.get(name)]
        wall = clock(time.monotonic() - self.start)
        return f"rvc-mlx time per phase: {', '.join(parts) or 'no tests'}; wall {wall}"
