"""A run ends with one line of where its time went, per phase (make parity must stay within its budget)."""

from rvc_mlx.testing import phases


def test_each_test_is_charged_to_its_phase_by_path_and_slow_marker():
    assert phases.phase("tests/test_cli.py::test_x", {}) == "unit and pipeline tests"
    assert phases.phase("tests/parity/test_parity.py::test_x[rmvpe/speech]", {"parity": 1}) == "golden parity"
    assert phases.phase("tests/parity/test_parity.py::test_live[x]", {"slow": 1}) == \
        "live oracle + teacher forcing"
    assert phases.phase("tests/test_precision_study.py::test_committed_plan[rmvpe]", {"slow": 1}) == \
        "precision plans"
    assert phases.phase("tests/bench/test_bench_synth.py::test_bench_synth[x]", {"slow": 1}) == "benchmarks"
    assert phases.phase("tests/test_crepe.py::test_long", {"slow": 1}) == "slow checks"


def test_the_line_lists_phases_in_run_order_with_minutes_and_the_wall_time():
    p = phases.Phases()
    p.add("tests/bench/test_b.py::t", {}, 61.4)
    p.add("tests/test_a.py::t", {}, 2.0)
    p.add("tests/test_a.py::u", {}, 1.0)
    p.timed("report", 0.4)
    line = p.line()
    assert line.startswith("rvc-mlx time per phase: unit and pipeline tests 0m03s, benchmarks 1m01s, report 0m00s;")
    assert line.endswith("wall 0m00s")


def test_a_run_ends_with_its_time_per_phase(pytester):
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "rvc_mlx.testing.plugin", "-p", "no:cacheprovider")
    assert result.ret == 0
    result.stdout.re_match_lines([r"rvc-mlx time per phase: unit and pipeline tests 0m0\ds; wall \dm\d\ds"])
