"""pytest-xdist: golden regeneration with one writer, benchmarks refused in one line, and a parallel parity run
whose merged report equals the serial run's."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from test_golden_store import MANIFEST_RENAME_FAILS  # the same failing rename, now under xdist

from rvc_mlx.testing.components import GOLDEN, REPO
from rvc_mlx.testing.golden import CaseData, GoldenStore, TapInfo

pytest.importorskip("xdist", reason="pytest-xdist is a dev dependency: run `make install`")


@pytest.fixture(autouse=True)
def _outside_ci(monkeypatch):
    """Regeneration runs in subprocesses here; CI's own CI=1 would make the plugin refuse them."""
    monkeypatch.delenv("CI", raising=False)


STAGE_ON_TWO_WORKERS = """
import os
import numpy as np
from rvc_mlx.testing.golden import CaseData, TapInfo

def _stage(parity, case, value):
    taps = {"x": TapInfo("x", (4,), 0, "Linear", torch32={"max_rel": 1e-7})}
    parity.txn.stage(CaseData("toy", case, {"x": np.full(4, value, np.float32)}, taps, {"worker": case}, {}))
    with open(os.environ["WORKERS_LOG"], "a") as f:
        f.write(os.environ.get("PYTEST_XDIST_WORKER", "serial") + "\\n")

def test_a(parity):
    _stage(parity, "a", 2.0)

def test_b(parity):
    _stage(parity, "b", 3.0)

def test_c(parity):
    _stage(parity, "c", 4.0)

def test_d(parity):
    _stage(parity, "d", 5.0)
"""

def _golden(tmp_path):
    """A golden dir with the repository's tolerances and one toy case (a), which the run changes."""
    store = GoldenStore(tmp_path / "golden")
    txn = store.transaction()
    txn.stage(CaseData("toy", "a", {"x": np.ones(4, np.float32)}, {"x": TapInfo("x", (4,), 0, "Linear")}, {}, {}))
    txn.commit()
    shutil.copy(GOLDEN / "tolerances.toml", store.root)
    return store.root


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _regen_on_two_workers(pytester, tmp_path, monkeypatch):
    root = _golden(tmp_path)
    log = tmp_path / "workers.log"
    monkeypatch.setenv("WORKERS_LOG", str(log))
    pytester.makepyfile(STAGE_ON_TWO_WORKERS)
    res = pytester.runpytest_subprocess("-p", "rvc_mlx.testing.plugin", "--regen-golden", "--golden-dir",
                                        str(root), "--golden-diff", str(tmp_path / "diff.html"), "-n", "2",
                                        "-p", "no:cacheprovider")
    return root, res, log


def test_golden_regenerated_on_two_xdist_workers_is_committed_once_by_the_controller(pytester, tmp_path,
                                                                                     monkeypatch):
    root, res, log = _regen_on_two_workers(pytester, tmp_path, monkeypatch)
    out = res.stdout.str()
    assert res.ret == 0, out
    assert set(log.read_text().split()) == {"gw0", "gw1"}, "the cases did not run on both workers"
    # one commit, by the controller: one summary line naming every worker's case
    summaries = [ln for ln in out.splitlines() if ln.startswith("golden: ")]
    assert len(summaries) == 1 and "1 changed, 3 new" in summaries[0], out
    store = GoldenStore(root)
    for case, value in (("a", 2.0), ("b", 3.0), ("c", 4.0), ("d", 5.0)):
        np.testing.assert_array_equal(store.load("toy", case).value("x"), np.full(4, value, np.float32))
    assert not [p for p in root.iterdir() if p.name.startswith(".staging")], "a staging dir was left behind"
    page = (tmp_path / "diff.html").read_text()
    assert all(f"<h2>toy/{c} (new)</h2>" in page for c in "bcd") and "<h2>toy/a (changed)</h2>" in page


def test_a_failed_commit_under_xdist_is_one_line_and_leaves_golden_as_it_was(pytester, tmp_path, monkeypatch):
    pytester.makeconftest(MANIFEST_RENAME_FAILS)
    root = _golden(tmp_path)
    before = _files(root)
    monkeypatch.setenv("WORKERS_LOG", str(tmp_path / "workers.log"))
    pytester.makepyfile(STAGE_ON_TWO_WORKERS)
    res = pytester.runpytest_subprocess("-p", "rvc_mlx.testing.plugin", "--regen-golden", "--golden-dir",
                                        str(root), "-n", "2", "-p", "no:cacheprovider")
    text = res.stdout.str() + res.stderr.str()
    assert res.ret == pytest.ExitCode.TESTS_FAILED, text
    errors = [ln for ln in text.splitlines() if "golden NOT regenerated" in ln]
    assert len(errors) == 1 and "Input/output error" in errors[0], text
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    assert _files(root) == before


BENCH = """
def test_timed(benchmark):
    benchmark(sum, [1, 2, 3])

def test_plain():
    assert sum([1, 2, 3]) == 6
"""


@pytest.mark.parametrize("args, line", [
    (("-n", "2"), "rvc-mlx: benchmarks do not run under pytest-xdist (their timings need the whole machine): "
                  "1 deselected; run `make bench` without -n"),
    (("-p", "no:benchmark"), "rvc-mlx: 1 benchmarks deselected: pytest-benchmark is not loaded "
                             "(-p no:benchmark); run `make bench` for them"),
])
def test_benchmarks_are_refused_in_one_line_where_they_cannot_time(pytester, args, line):
    pytester.makepyfile(BENCH)
    res = pytester.runpytest_subprocess("-p", "rvc_mlx.testing.plugin", *args, "-p", "no:cacheprovider")
    assert res.ret == 0, res.stdout.str()
    assert res.stdout.str().count(line) == 1, res.stdout.str()
    res.assert_outcomes(passed=1)


def _report(tmp_path, name, *args):
    path = tmp_path / f"{name}.json"
    # two components (two loadgroups: synth and pitch), so that both workers hand back results
    cmd = [sys.executable, "-m", "pytest", "tests/parity/test_parity.py",
           "-k", "every_tap and (v1-32k-f0 or fcpe)", "-m", "not slow", "-p", "no:benchmark", "-p", "no:cacheprovider",
           "--report", str(path), *args]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "CI": ""})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(path.read_text()), path.with_suffix(".html").read_text(), res.stdout


@pytest.mark.slow  # nine parity tests twice: in make parity
def test_a_parity_run_on_two_xdist_workers_reports_what_the_serial_run_reports(tmp_path):
    serial, serial_html, _ = _report(tmp_path, "serial")
    parallel, parallel_html, out = _report(tmp_path, "parallel", "-n", "2")  # loadgroup by default
    assert "created: 2/2 workers" in out, out
    assert serial["summary"]["cases"] >= 6
    assert parallel == serial
    assert parallel_html == serial_html


def test_untimed_benchmarks_run_under_xdist_as_plain_tests(pytester):
    pytester.makepyfile(BENCH)
    res = pytester.runpytest_subprocess("-p", "rvc_mlx.testing.plugin", "-n", "2", "--benchmark-disable",
                                        "-p", "no:cacheprovider")
    assert res.ret == 0, res.stdout.str()
    assert "benchmarks do not run" not in res.stdout.str()
    res.assert_outcomes(passed=2)


KILL_ONE_WORKER = """
import os
import numpy as np
from rvc_mlx.testing.golden import CaseData, TapInfo

def _stage(parity, case, value):
    taps = {"x": TapInfo("x", (4,), 0, "Linear", torch32={"max_rel": 1e-7})}
    parity.txn.stage(CaseData("toy", case, {"x": np.full(4, value, np.float32)}, taps, {}, {}))

def test_a(parity):
    _stage(parity, "a", 2.0)

def test_b(parity):
    _stage(parity, "b", 3.0)
    os._exit(3)  # the worker dies with a case staged
"""


def test_a_worker_that_dies_during_regeneration_commits_nothing(pytester, tmp_path):
    root = _golden(tmp_path)
    before = _files(root)
    pytester.makepyfile(KILL_ONE_WORKER)
    res = pytester.runpytest_subprocess("-p", "rvc_mlx.testing.plugin", "--regen-golden", "--golden-dir",
                                        str(root), "-n", "2", "--max-worker-restart", "0", "-p", "no:cacheprovider")
    text = res.stdout.str() + res.stderr.str()
    assert res.ret != 0, text
    lines = [ln for ln in text.splitlines() if "golden NOT regenerated" in ln]
    assert len(lines) == 1 and "died" in lines[0], text
    # only the dead worker's staging dir is left (it could not clean up); the next regeneration sweeps it
    assert {k: v for k, v in _files(root).items() if not k.startswith(".staging-")} == before
    GoldenStore(root).transaction().abort()
    assert _files(root) == before
