"""pytest-xdist support of the parity plugin: what each worker hands back, and how the controller merges it.

A worker judges its cases and, under --regen-golden, stages them in its own transaction; it never commits. At
its end it packs its CaseResults, staged cases and regeneration errors into `workeroutput` (pickled: the bytes
come from this run's own worker processes, never from a file) and drops its staging dir. The controller unpacks
them as each worker goes down, adopts every staged case into its own transaction (re-encoded there, so workers
may run on other hosts: `--tx ssh=...`), commits once (the one writer of golden/) and writes one report.
Benchmarks need the whole machine for their timings: under xdist they are deselected, said in one line (unless
--benchmark-disable makes them plain untimed tests, as `make test` does).
"""

from __future__ import annotations

import pickle
from typing import Any

from rvc_mlx.testing.golden import GoldenError

KEY = "rvc_mlx_parity"
BENCH_REFUSED = ("rvc-mlx: benchmarks do not run under pytest-xdist (their timings need the whole machine): "
                 "{n} deselected; run `make bench` without -n")
BENCH_UNLOADED = ("rvc-mlx: {n} benchmarks deselected: pytest-benchmark is not loaded (-p no:benchmark); "
                  "run `make bench` for them")


def is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def is_controller(config) -> bool:
    """True in the process that distributes tests to xdist workers (`-n N` with N > 0)."""
    return not is_worker(config) and bool(getattr(config.option, "numprocesses", None)) \
        and getattr(config.option, "dist", "no") != "no"


def group(item) -> str | None:
    """The component a parity test exercises (its models stay loaded on one worker under --dist loadgroup)."""
    spec = getattr(item, "callspec", None)
    if spec is not None and isinstance(spec.params.get("component"), str):
        return spec.params["component"]
    return None


def pack(harness, bench_note: str | None = None) -> bytes:
    """What a worker hands back: its results, its staged golden cases, its regeneration errors, and the line
    saying its benchmarks were deselected."""
    txn = harness.txn if harness is not None else None
    errors = list(harness.regen_errors) if harness is not None else []
    if txn is not None and txn.failed and txn.failed not in errors:
        errors.append(txn.failed)
    from rvc_mlx.testing.environment import environment
    from rvc_mlx.testing.golden import versions

    blob = pickle.dumps({"results": harness.results if harness is not None else [],
                         "staged": dict(txn.staged) if txn is not None else {}, "regen_errors": errors,
                         "bench": bench_note, "origin": {"versions": versions(), "environment": environment()}})
    if txn is not None:
        txn.abort()  # the controller re-encodes what it adopts: this staging dir is not needed
    return blob


def unpack(blob: bytes) -> dict[str, Any]:
    return pickle.loads(blob)  # noqa: S301 - this run's own worker wrote it (see the module docstring)


def origin(outputs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The versions and environment the workers' cases ran under (for the report); where workers differ (hosts
    of `--tx ssh=...`), the first's, with every worker's environment listed."""
    runs = [o["origin"] for o in outputs if o["results"]]
    if not runs:
        return None
    first = dict(runs[0])
    if any(r != runs[0] for r in runs[1:]):
        first["environment"] = {**first["environment"], "workers": [r["environment"] for r in runs]}
    return first


def merge(harness, outputs: list[dict[str, Any]]) -> list:
    """Fold the workers' outputs into the controller's harness: results (in one order, whatever the workers'
    schedule), regeneration errors, and staged cases adopted into its transaction. Returns the results."""
    results = list(harness.results)
    for out in outputs:
        results += out["results"]
        for err in out["regen_errors"]:
            if err not in harness.regen_errors:
                harness.regen_errors.append(err)
        if harness.txn is not None:
            for staged in out["staged"].values():
                try:
                    harness.txn.adopt(staged)
                except GoldenError as e:
                    if str(e) not in harness.regen_errors:
                        harness.regen_errors.append(str(e))
    return ordered(results)


def ordered(results: list) -> list:
    """One order for the report, serial or parallel: by component, case, path and reference (stable)."""
    return sorted(results, key=lambda r: (r.component, r.case, r.path, r.source, r.execution))
