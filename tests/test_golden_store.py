"""Golden store: integrity on load, one-line errors naming the file, atomic regeneration, size budget."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from rvc_mlx.testing.components import GOLDEN, REPO, load_specs
from rvc_mlx.testing.golden import CaseData, GoldenError, GoldenStore, TapInfo

BUDGET_BYTES = 60 * 1000 * 1000


def _case(case="a", scale=1.0):
    x = np.arange(12, dtype=np.float32).reshape(3, 4) * scale
    taps = {
        "layer.0": TapInfo("layer.0", (3, 4), 0, "Conv1d", torch32={"max_rel": 1e-7}),
        "layer.1": TapInfo("layer.1", (3, 4), 1, "Sequential", alias_of="layer.0"),
        "out": TapInfo("out", (3,), 2, "Linear"),
    }
    return CaseData("toy", case, {"layer.0": x, "out": x.sum(1)}, taps, {"file": "inputs/x.wav"}, {"seed": 0})


def _store(tmp_path, *cases):
    store = GoldenStore(tmp_path / "golden")
    txn = store.transaction()
    for c in cases:
        txn.stage(c)
    delta = txn.commit()
    return store, delta


def test_regenerated_case_round_trips_with_aliases_stored_once(tmp_path):
    store, _ = _store(tmp_path, _case())
    got = store.load("toy", "a")
    np.testing.assert_array_equal(got.value("layer.1"), got.value("layer.0"))
    assert "layer.1" not in got.tensors and got.source == "golden"
    assert [t.name for t in got.ordered()] == ["layer.0", "layer.1", "out"]
    assert not any(p.name.startswith(".staging") for p in store.root.iterdir())


def test_flipped_byte_gives_one_line_error_naming_the_file(tmp_path):
    store, _ = _store(tmp_path, _case())
    path = store.case_path("toy", "a")
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(GoldenError) as e:
        store.load("toy", "a")
    msg = str(e.value)
    assert "\n" not in msg
    assert "golden/toy/a.safetensors is corrupt" in msg and "make golden" in msg


def test_missing_file_missing_case_and_broken_manifest_each_name_the_fix(tmp_path):
    store, _ = _store(tmp_path, _case())
    with pytest.raises(GoldenError, match="has no case toy/b: run `make golden`"):
        store.load("toy", "b")
    store.case_path("toy", "a").unlink()
    with pytest.raises(GoldenError, match=r"golden/toy/a.safetensors is missing: restore it"):
        store.load("toy", "a")
    store.manifest_path.write_text("{not json")
    with pytest.raises(GoldenError, match="manifest.json is not valid JSON"):
        GoldenStore(store.root).load("toy", "a")


def test_aborted_regeneration_leaves_golden_untouched(tmp_path):
    store, _ = _store(tmp_path, _case())
    before = {p: p.read_bytes() for p in store.root.rglob("*") if p.is_file()}
    txn = store.transaction()
    txn.stage(_case(scale=2.0))
    txn.abort()  # what the plugin does when a reference run failed
    after = {p: p.read_bytes() for p in store.root.rglob("*") if p.is_file()}
    assert before == after


def test_regeneration_prints_an_old_vs_new_delta_per_tensor(tmp_path):
    store, _ = _store(tmp_path, _case())
    _, delta = _store(tmp_path, _case(scale=1.5))
    assert "golden toy/a: 3 taps" in delta
    assert "~ layer.0" in delta and "max|new-old| 5.500e+00" in delta
    assert "0 of 3 taps bitwise unchanged" in delta


def test_golden_directory_stays_within_the_60_mb_budget():
    files = subprocess.run(["git", "ls-files", "golden"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    files = files or [str(p.relative_to(REPO)) for p in GOLDEN.rglob("*") if p.is_file()]
    total = sum((REPO / f).stat().st_size for f in files if (REPO / f).exists())
    assert total > 0
    assert total <= BUDGET_BYTES, f"golden/ holds {total / 1e6:.1f} MB, over the {BUDGET_BYTES / 1e6:.0f} MB budget"


def test_manifest_has_exactly_the_cases_that_cases_toml_defines():
    manifest = json.loads((GOLDEN / "manifest.json").read_text())
    defined = {f"{c.component}/{c.name}" for s in load_specs().values() for c in s.cases}
    assert set(manifest["cases"]) == defined


INNER_TEST = """
def test_inner(parity):
    parity.check("rmvpe", "speech")
"""


def test_corrupt_golden_fails_the_parity_test_with_one_line_naming_the_file(pytester, tmp_path):
    bad = tmp_path / "golden"
    shutil.copytree(GOLDEN, bad, ignore=shutil.ignore_patterns("inputs"))
    path = bad / "rmvpe" / "speech.safetensors"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    path.write_bytes(bytes(blob))
    pytester.makepyfile(INNER_TEST)
    res = pytester.runpytest_subprocess("-p", "rvc_mlx.testing.plugin", "--golden-dir", str(bad), "-q")
    assert res.ret == 1
    out = res.stdout.str()
    lines = [ln for ln in out.splitlines() if "speech.safetensors is corrupt" in ln]
    assert lines, out
    assert "make golden" in lines[0] and "Traceback" not in out


def test_regeneration_is_refused_when_ci_is_set(pytester, monkeypatch):
    monkeypatch.setenv("CI", "1")
    pytester.makepyfile(INNER_TEST)
    res = pytester.runpytest_subprocess("-p", "rvc_mlx.testing.plugin", "--regen-golden")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "refusing to regenerate golden files in CI" in res.stderr.str()


def test_make_golden_refuses_in_ci():
    env = {**os.environ, "CI": "1"}
    res = subprocess.run(["make", "-s", "golden"], cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode != 0
    assert "refusing to regenerate golden files in CI" in res.stdout + res.stderr
