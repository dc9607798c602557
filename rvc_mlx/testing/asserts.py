"""The assertion every parity test makes: a failure opens with the blame line and where the blamed tap fails (its
worst element with the MLX and reference values, or its first disagreeing frames), without the harness's
traceback and without pytest's `where False = ...` rewriting of a bare assert."""

from __future__ import annotations

import pytest

from rvc_mlx.testing.compare import CaseResult


def assert_matches(result: CaseResult, teacher_min: int | None = None) -> None:
    """Fail unless every tap of `result` (and of its layer-by-layer run) passes and every case-level requirement
    holds; with `teacher_min`, also unless teacher forcing judged at least that many modules on each path and
    every one passes on the oracle's inputs."""
    __tracebackhide__ = True
    failed = not result.passed
    if teacher_min is not None:
        runs = [r for r in (result, result.layers) if r is not None]
        failed = failed or any(r.teacher_failures(teacher_min) for r in runs)
    if failed:
        pytest.fail(result.failure_message(teacher_min or 0), pytrace=False)
