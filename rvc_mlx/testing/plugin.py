"""pytest plugin of the parity harness (loaded by the repository's conftest.py).

Options: --regen-golden (refused when CI is set; a case whose float64 oracle did not change keeps its golden file
and recorded torch float32 errors), --refresh-errors (with --regen-golden: re-measure those errors too),
--weights-dir DIR (real checkpoints, judged against a live float64 twin run instead of golden), --report PATH (JSON;
the HTML is written beside it), --precision (with --report: the committed mixed-precision plans' study as a
section of the report), --golden-dir DIR, --mlx-device cpu|gpu (MLX's default device; gpu fails in one line
where MLX has none).
Under pytest-xdist (`-n N`, by default with --dist loadgroup: a component's cases share one worker's models) the
workers' results merge into one report and one process writes golden/ (rvc_mlx.testing.parallel); benchmarks are
deselected there.
Fixture `parity`: `parity.check(component, case, live=False, teacher=False, path="kernels")` returns a CaseResult
(the shipped path, with the layer-by-layer run attached) on this machine's default path (the kernels where built,
unless RVC_MLX_KERNELS=0); `path="mlx"` judges the pure-MLX path. Harness errors (corrupt golden, wrong
checkpoint, bad spec) fail the test with their one-line message.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from rvc_mlx.checkpoints import CheckpointError
from rvc_mlx.dispatch import KernelError
from rvc_mlx.testing import parallel, phases
from rvc_mlx.testing.components import GOLDEN, SpecError
from rvc_mlx.testing.golden import GoldenError
from rvc_mlx.testing.taps import TapError
from rvc_mlx.testing.tolerances import ToleranceError

HARNESS_ERRORS = (GoldenError, CheckpointError, SpecError, ToleranceError, TapError, KernelError)


def pytest_addoption(parser):
    g = parser.getgroup("rvc-mlx parity")
    g.addoption("--regen-golden", action="store_true", help="regenerate golden files from the float64 twin "
                "(atomic; refused when CI is set)")
    g.addoption("--refresh-errors", action="store_true", help="with --regen-golden: also rewrite the torch float32 "
                "errors (and files) of cases whose float64 oracle did not change (they are kept otherwise)")
    g.addoption("--weights-dir", type=Path, default=None, help="run parity on real checkpoints in DIR "
                "(rmvpe.pt, ...) against a live float64 twin run instead of golden")
    g.addoption("--report", type=Path, default=None, help="write the parity report JSON here (+ .html beside)")
    g.addoption("--bench-spot-check", action="store_true", help="time each benchmark once, without the op-class "
                "profile (make parity; make bench takes medians of 3)")
    g.addoption("--bench-results", type=Path, default=None, help="with --report: the benchmark JSON of an earlier "
                "run (make parity times its benchmarks alone first, then judges parity on two workers)")
    g.addoption("--baseline", type=Path, default=Path("reports/baseline.json"),
                help="the accepted run to report drift against (default reports/baseline.json, if present; "
                     "`make baseline` accepts the current reports/parity.json)")
    g.addoption("--golden-diff", type=Path, default=Path("reports/golden-diff.html"),
                help="with --regen-golden: where to write the reviewer's diff page of what changed")
    g.addoption("--fail-on-drift", type=float, default=None, metavar="F",
                help="fail a case whose taps' MLX error grew by more than F x against --baseline")
    g.addoption("--golden-dir", type=Path, default=GOLDEN, help="golden store to use (default: golden/)")
    g.addoption("--precision", action="store_true", help="with --report: add the precision study of the committed "
                "mixed-precision plans (golden/precision.toml; float16, bfloat16, plans vs float32) to the report")
    g.addoption("--mlx-device", choices=("cpu", "gpu"), default="cpu", help="MLX's device for the MLX side "
                "(gpu: Metal or CUDA; the C++ kernels are CPU-only, so gpu runs the pure-MLX ops there)")


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which turns a plain -n into --dist load
def pytest_cmdline_main(config):
    """`-n N` without --dist distributes by component (loadgroup): each component's models load on one worker."""
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", None) == "no" \
            and not getattr(config.option, "distload", False):
        config.option.dist = "loadgroup"


class _PhaseClock:
    """Per-config recorder of each test's time by phase (under xdist, the controller receives every report)."""

    def __init__(self) -> None:
        self.phases = phases.Phases()

    def pytest_runtest_logreport(self, report) -> None:
        self.phases.add(report.nodeid, report.keywords, report.duration)


def pytest_configure(config):
    config.pluginmanager.register(_PhaseClock(), f"rvc_mlx_phases_{id(config)}")
    if config.getoption("--bench-spot-check"):
        from rvc_mlx.testing import bench

        bench.SPOT_CHECK = True
    if config.getoption("--regen-golden") and os.environ.get("CI"):
        raise pytest.UsageError("refusing to regenerate golden files in CI (CI is set): goldens are reviewed "
                                "artefacts; run `make golden` locally and commit the result")
    if config.getoption("--regen-golden") and config.getoption("--weights-dir"):
        raise pytest.UsageError("--regen-golden and --weights-dir do not mix: goldens are made from the "
                                "synthetic checkpoints so that anyone can reproduce them")
    if config.getoption("--refresh-errors") and not config.getoption("--regen-golden"):
        raise pytest.UsageError("--refresh-errors only applies with --regen-golden (`make golden REFRESH_ERRORS=1`)")
    wd = config.getoption("--weights-dir")
    if wd is not None and not Path(wd).is_dir():
        raise pytest.UsageError(f"--weights-dir {wd}: no such directory")
    if config.getoption("--mlx-device") == "gpu":
        from rvc_mlx import dispatch

        try:
            dispatch.use_device("gpu")
        except KernelError as e:
            raise pytest.UsageError(str(e)) from None


def pytest_report_header(config):
    from rvc_mlx import _blas, dispatch
    from rvc_mlx.testing import twins_blas

    return [f"rvc-mlx: MLX matmuls use {_blas.status()}", f"rvc-mlx: the twins' matmuls use {twins_blas()}",
            f"rvc-mlx: {dispatch.status()}"]


class ParityFixture:
    """Thin pytest-facing wrapper over `Parity`: harness errors become one-line test failures (a failed golden
    staging also stops the session: nothing will be committed)."""

    def __init__(self, harness, session):
        self.harness = harness
        self.session = session

    def __getattr__(self, name):
        return getattr(self.harness, name)

    def check(self, component: str, case: str, live: bool = False, teacher: bool = False, path: str = "kernels",
              record: bool = True):
        from rvc_mlx import _blas

        if path not in ("kernels", "mlx"):
            raise ValueError(f"path must be 'kernels' or 'mlx', got {path!r}")
        try:
            result = self.harness.check(component, case, live=live, teacher=teacher, pure_mlx=path == "mlx",
                                        record=record)
        except HARNESS_ERRORS as e:
            txn = self.harness.txn
            if txn is not None and txn.failed:
                self.session.shouldstop = "golden staging failed"
            pytest.fail(str(e), pytrace=False)
        self._drift(result)
        if not result.passed and _blas.status().startswith("MLX's bundled"):
            result.notes.append(f"note: {_blas.status()}; goldens assume OpenBLAS, whose float32 GEMM is "
                                "about 3x more accurate")
        return result


    def _drift(self, result) -> None:
        """--fail-on-drift F: fail the case when a tap's MLX error grew more than F x against the baseline."""
        factor, baseline = self.session.config.getoption("--fail-on-drift"), _baseline(self.session.config)
        if factor is None or baseline is None:
            return
        from rvc_mlx.testing import drift, report

        moves = [m for r in (result, result.layers) if r is not None
                 for m in drift.exceeding(report.case_json(r), baseline, factor)]
        if moves:
            moves.sort(key=lambda m: -m.ratio)
            pytest.fail(f"{len(moves)} taps' MLX error grew by more than {factor:g}x since the baseline "
                        f"({self.session.config.getoption('--baseline')}), largest first:\n"
                        + "\n".join(f"  {m.line()}" for m in moves), pytrace=False)


def _baseline(config):
    """The baseline report (loaded once), or None where there is none."""
    if not hasattr(config, "_rvc_baseline"):
        from rvc_mlx.testing.drift import load_baseline

        path = config.getoption("--baseline")
        try:
            config._rvc_baseline = load_baseline(path if path.is_absolute() else config.rootpath / path)
        except ValueError as e:
            raise pytest.UsageError(str(e)) from None
    return config._rvc_baseline


def _harness(config):
    h = getattr(config, "_rvc_parity", None)
    if h is None:
        from rvc_mlx.testing.harness import Parity

        h = Parity(config.getoption("--golden-dir"), regen=config.getoption("--regen-golden"),
                   weights_dir=config.getoption("--weights-dir"), refresh_errors=config.getoption("--refresh-errors"))
        config._rvc_parity = h
    return h


# Resident memory above which the harness releases its models at a module / component boundary: reloading costs
# time, so models stay while the process is small (make test peaks at 6.3 GB with this, 17 GB without release).
# Under xdist each worker gets its share of the bound.
RELEASE_ABOVE = 3 << 30


def _resident_bytes() -> int | None:
    """This process's resident memory now (Linux /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def pytest_runtest_teardown(item, nextitem):
    """After a test module, or where a module's tests move to another component (the xdist group), the harness
    releases its models once the process holds more than RELEASE_ABOVE (always where that cannot be read): the
    suite's peak memory stays near one module's, not that of every model the session has loaded."""
    if nextitem is not None:
        g1, g2 = parallel.group(item), parallel.group(nextitem)
        if (g1 is not None and g1 == g2) or (nextitem.module is item.module and (g1 is None or g2 is None)):
            return
    h = getattr(item.config, "_rvc_parity", None)
    resident = _resident_bytes()
    workers = getattr(item.config, "workerinput", {}).get("workercount", 1)
    if h is not None and (resident is None or resident > RELEASE_ABOVE // max(1, workers)):
        h.release()


def pytest_sessionstart(session):
    """With --regen-golden, open the golden transaction before any case runs: a golden dir that cannot take the
    staged files (read-only, ...) stops the run at once, in one line."""
    if session.config.getoption("--regen-golden"):
        try:
            _harness(session.config)
        except HARNESS_ERRORS as e:
            raise pytest.UsageError(f"golden NOT regenerated: {e}") from None


@pytest.hookimpl(tryfirst=True)  # before xdist's loadgroup reads the groups
def pytest_collection_modifyitems(session, config, items):
    """Benchmarks leave the run where they cannot time (under xdist) or cannot run (pytest-benchmark not loaded);
    under xdist, a parity test joins its component's group."""
    bench = [i for i in items if "benchmark" in getattr(i, "fixturenames", ())]
    why = None
    if bench and not config.pluginmanager.hasplugin("benchmark"):
        why = parallel.BENCH_UNLOADED
    elif bench and parallel.is_worker(config) and not _untimed(config):
        why = parallel.BENCH_REFUSED
    if why is not None:
        config.hook.pytest_deselected(items=bench)
        items[:] = [i for i in items if i not in set(bench)]
        config._rvc_bench_deselected = why.format(n=len(bench))
    if config.pluginmanager.hasplugin("xdist"):
        for item in items:
            name = parallel.group(item)
            if name is not None and not item.get_closest_marker("xdist_group"):
                item.add_marker(pytest.mark.xdist_group(name))


def _untimed(config) -> bool:
    """--benchmark-disable / --benchmark-skip: a benchmark test runs once as a plain test, or not at all; nothing
    is timed, so xdist may run it."""
    return bool(config.getoption("benchmark_disable", False) or config.getoption("benchmark_skip", False))


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    """The benchmark JSON records what decides the timings (CPU, ISA, kernel build, BLAS core type, threads):
    `make bench` prints it above the table."""
    from rvc_mlx.testing.environment import environment

    machine_info["rvc_mlx"] = environment()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist controller: keep what a finished worker handed back (merged at the session's end)."""
    blob = getattr(node, "workeroutput", {}).get(parallel.KEY)
    if blob is not None:
        node.config.__dict__.setdefault("_rvc_worker_outputs", []).append(parallel.unpack(blob))
    if error is not None:  # a crashed worker hands back nothing: its cases are neither reported nor staged
        worker = getattr(node, "workerinput", {}).get("workerid", "?")
        why = (str(error).strip().splitlines() or [repr(error)])[-1]
        node.config.__dict__.setdefault("_rvc_worker_deaths", []).append(f"worker {worker} died ({why})")


@pytest.fixture(scope="session")
def parity(request) -> ParityFixture:
    try:
        return ParityFixture(_harness(request.config), request.session)
    except HARNESS_ERRORS as e:
        pytest.fail(str(e), pytrace=False)


def pytest_generate_tests(metafunc):
    """A test that takes `isa` runs once per kernel build this CPU runs (avx512, avx2, generic: none on macOS)."""
    if "isa" in metafunc.fixturenames:
        from rvc_mlx import dispatch

        metafunc.parametrize("isa", dispatch.runnable(), indirect=True)


@pytest.fixture
def isa(request):
    """The kernel build the test runs on (dispatch.use_isa for its duration)."""
    from rvc_mlx import dispatch

    with dispatch.use_kernels(True), dispatch.use_isa(request.param):
        yield request.param


@pytest.fixture
def pure_mlx():
    """The test runs on the pure-MLX path (dispatch.use_kernels(False): what macOS and MLX's GPU run)."""
    from rvc_mlx import dispatch

    with dispatch.use_kernels(False):
        yield


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    config = session.config
    h = getattr(config, "_rvc_parity", None)
    bench_note = getattr(config, "_rvc_bench_deselected", None)
    if parallel.is_worker(config):  # the controller reports and commits (pytest_testnodedown)
        if h is not None or bench_note:
            config.workeroutput[parallel.KEY] = parallel.pack(h, bench_note)
        return
    outputs = getattr(config, "_rvc_worker_outputs", [])
    notes = {n for n in [bench_note, *(o["bench"] for o in outputs)] if n}
    results = h.results if h is not None else []
    if any(o["results"] or o["staged"] or o["regen_errors"] for o in outputs):
        h = _harness(config)
        results = parallel.merge(h, outputs)
    results = parallel.ordered(results)
    deaths = getattr(config, "_rvc_worker_deaths", [])  # under --regen-golden h exists since sessionstart
    if deaths and h is not None and h.txn is not None:
        h.regen_errors += [d for d in deaths if d not in h.regen_errors]
    tr = config.pluginmanager.get_plugin("terminalreporter")
    clock = config.pluginmanager.get_plugin(f"rvc_mlx_phases_{id(config)}")
    said = []

    def say(text):
        if tr is None:
            return print(text)
        if not said:  # end the progress line ("....  [100%]") that the summary would end only after us
            tr.write_line("")
        said.append(text)
        tr.write_line(text)
    for note in sorted(notes):
        say(note)
    for death in deaths:
        say(f"rvc-mlx: {death}: its cases are missing from the report")
    if h is not None and h.txn is not None:
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED and not h.regen_errors
        if h.regen_errors or interrupted or not h.txn.staged:
            h.txn.abort()
            why = "; ".join(h.regen_errors) or ("interrupted" if interrupted else "no parity case ran")
            say(f"golden NOT regenerated ({why}); golden/ is unchanged")
            if h.regen_errors:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        else:
            staged = dict(h.txn.staged)  # the commit clears them
            try:
                say(h.txn.commit())
            except GoldenError as e:  # one line, golden/ as it was (never an INTERNALERROR)
                say(f"golden NOT regenerated: {e}")
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            else:
                from rvc_mlx.testing import golden_diff

                page = config.getoption("--golden-diff")
                page = page if page.is_absolute() else config.rootpath / page
                try:
                    say(f"golden diff page: {golden_diff.write(page, staged, h.policy)}")
                except OSError as e:  # the goldens are committed; only the page is missing
                    say(f"golden diff page NOT written ({e})")
    report = config.getoption("--report")
    if report is not None and h is not None and results:
        from rvc_mlx.testing import report as rep

        bench = None
        # a path (pytest-benchmark >= 5) or an open file
        bj = config.getoption("--bench-results") or getattr(config.option, "benchmark_json", None)
        if bj is not None:
            try:
                path = Path(bj) if isinstance(bj, (str, os.PathLike)) else Path(bj.name)
                bench = json.loads(path.read_text())
            except (OSError, ValueError):
                bench = None
        study = None
        if config.getoption("--precision"):
            from rvc_mlx.testing import precision_study

            start = time.monotonic()
            study = precision_study.run(search=False, log=lambda s: say(f"precision: {s}"))
            if clock is not None:
                clock.phases.timed("precision plans", time.monotonic() - start)
        start = time.monotonic()
        html_path = rep.write(report, results, h.policy, bench, _baseline(config), parallel.origin(outputs),
                              study)
        say(f"parity report: {report} and {html_path}")
        if clock is not None:
            clock.phases.timed("report", time.monotonic() - start)
    if clock is not None:
        say(clock.phases.line())
