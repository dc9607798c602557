"""Golden store: integrity on load, one-line errors naming the file, deterministic regeneration that keeps
unchanged cases, a commit that is atomic as a whole (journal, recovery after a kill, rollback on failure), size
budget."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rvc_mlx.testing import golden
from rvc_mlx.testing.components import GOLDEN, REPO, load_specs
from rvc_mlx.testing.golden import JOURNAL, CaseData, GoldenError, GoldenStore, TapInfo, oracle_change

BUDGET_BYTES = 60 * 1000 * 1000


@pytest.fixture(autouse=True)
def _outside_ci(monkeypatch):
    """These tests regenerate toy goldens in subprocesses; CI's own CI=1 would make the plugin refuse them."""
    monkeypatch.delenv("CI", raising=False)


def _case(case="a", scale=1.0, err=1e-7, bins=(1.0, 2.0, 3.0)):
    x = np.arange(12, dtype=np.float32).reshape(3, 4) * np.float32(scale)
    taps = {
        "layer.0": TapInfo("layer.0", (3, 4), 0, "Conv1d", torch32={"max_rel": err}),
        "layer.1": TapInfo("layer.1", (3, 4), 1, "Sequential", alias_of="layer.0"),
        "out": TapInfo("out", (3,), 2, "Linear", torch32={"max_rel": 2 * err}),
        "bins": TapInfo("bins", (3,), 3, "tap", kind="discrete"),
    }
    tensors = {"layer.0": x, "out": x.sum(1), "bins": np.array(bins, np.float32)}
    return CaseData("toy", case, tensors, taps, {"file": "inputs/x.wav"}, {"seed": 0})


def _store(tmp_path, *cases, refresh=False):
    store = GoldenStore(tmp_path / "golden")
    txn = store.transaction(refresh_errors=refresh)
    for c in cases:
        txn.stage(c)
    delta = txn.commit()
    return store, delta


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line_error(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def test_regenerated_case_round_trips_with_aliases_stored_once(tmp_path):
    store, _ = _store(tmp_path, _case())
    got = store.load("toy", "a")
    np.testing.assert_array_equal(got.value("layer.1"), got.value("layer.0"))
    assert "layer.1" not in got.tensors and got.source == "golden"
    assert [t.name for t in got.ordered()] == ["layer.0", "layer.1", "out", "bins"]
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
    before = _files(store.root)
    txn = store.transaction()
    txn.stage(_case(scale=2.0))
    txn.abort()  # what the plugin does when a reference run failed
    assert _files(store.root) == before


# -- deterministic regeneration: unchanged cases keep their bytes and recorded torch32 errors

def test_regenerating_unchanged_cases_keeps_every_byte_and_the_recorded_torch32_errors(tmp_path):
    store, _ = _store(tmp_path, _case("a"), _case("b"))
    before = _files(store.root)
    # the same oracle on another CPU: torch float32's own errors differ, the oracle does not
    _, delta = _store(tmp_path, _case("a", err=5e-7), _case("b", err=3e-7))
    assert _files(store.root) == before
    assert "golden toy/a: kept: oracle unchanged (max rel 0.0e+00 <= 1e-06); torch32 errors kept" in delta
    assert "golden: 0 changed, 0 new, 0 refreshed, 2 kept; golden/ is unchanged" in delta
    assert GoldenStore(store.root).load("toy", "a").taps["layer.0"].torch32 == {"max_rel": 1e-7}


def test_stage_returns_the_kept_golden_so_the_session_judges_what_is_committed(tmp_path):
    store, _ = _store(tmp_path, _case())
    txn = store.transaction()
    got = txn.stage(_case(err=9e-7))
    txn.abort()
    assert got.source == "golden" and got.taps["out"].torch32 == {"max_rel": 2e-7}


def test_float64_last_bit_noise_is_unchanged_but_a_real_change_or_a_flipped_discrete_tap_is_not(tmp_path):
    store, _ = _store(tmp_path, _case())
    old = store.load("toy", "a")
    noisy = _case()
    noisy.tensors["layer.0"] = np.nextafter(noisy.tensors["layer.0"], np.float32(np.inf))  # one float32 ulp up
    assert oracle_change(old, noisy)[0] is None
    moved = _case()
    moved.tensors["out"] = moved.tensors["out"] * np.float32(1 + 3e-6)
    assert oracle_change(old, moved)[0] == "oracle changed at tap out (max rel 3.0e-06)"
    assert oracle_change(old, _case(bins=(1.0, 2.0, 4.0)))[0] == "oracle changed at discrete tap bins"
    other_input = _case()
    other_input.input = {"file": "inputs/y.wav"}
    assert oracle_change(old, other_input)[0] == "input changed"
    nan = _case()
    nan.tensors["out"][0] = np.nan
    assert oracle_change(old, nan)[0] == "oracle changed at tap out (max rel inf)"


def test_refresh_errors_rewrites_the_torch32_errors_of_an_unchanged_case_and_nothing_else(tmp_path):
    store, _ = _store(tmp_path, _case())
    before = _files(store.root)
    _, delta = _store(tmp_path, _case(err=5e-7), refresh=True)
    assert "golden toy/a: errors refreshed (oracle unchanged, max rel 0.0e+00); torch32 max_rel moved most at " \
           "out: 2e-07 -> 1e-06" in delta
    after = _files(store.root)
    assert after["toy/a.safetensors"] == before["toy/a.safetensors"]  # same oracle, same bytes
    assert after["manifest.json"] != before["manifest.json"]
    assert GoldenStore(store.root).load("toy", "a").taps["layer.0"].torch32 == {"max_rel": 5e-7}


def test_changed_oracle_is_rewritten_and_the_delta_names_the_first_changed_tap(tmp_path):
    store, _ = _store(tmp_path, _case(), _case("b"))
    _, delta = _store(tmp_path, _case(scale=1.5, err=3e-7), _case("b"), _case("c"))
    assert "golden toy/a: oracle changed at tap layer.0 (max rel 5.0e-01); 4 taps" in delta
    assert "~ layer.0" in delta and "max|new-old| 5.500e+00" in delta and "= bins" in delta
    assert "1 of 4 taps bitwise unchanged" in delta
    assert "golden toy/b: kept: oracle unchanged" in delta and "golden toy/c: new case; 4 taps" in delta
    assert "golden: 1 changed, 1 new, 0 refreshed, 1 kept; 2 file(s) and the manifest replaced atomically" in delta
    got = GoldenStore(store.root).load("toy", "a")
    np.testing.assert_array_equal(got.value("layer.0"), _case(scale=1.5).tensors["layer.0"])
    assert got.taps["layer.0"].torch32 == {"max_rel": 3e-7}


def test_a_new_case_is_written_with_the_same_bytes_every_time(tmp_path):
    # the reference safetensors writer orders metadata by a per-process random hash: repeat to catch that
    blobs = {_store(tmp_path / str(i), _case())[0].case_path("toy", "a").read_bytes() for i in range(8)}
    assert len(blobs) == 1
    from safetensors import safe_open

    path = tmp_path / "0" / "golden" / "toy" / "a.safetensors"
    with safe_open(str(path), "np") as f:
        assert f.metadata() == {"case": "a", "component": "toy"}
        np.testing.assert_array_equal(f.get_tensor("out"), _case().tensors["out"])


# -- the commit is atomic as a whole

class _Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so none of the commit's own rollback runs."""


def _fail_rename(monkeypatch, at, error=None, once=True):
    """os.replace of a golden file (a case file or the manifest) raises `error` (default: dies) at the `at`-th
    such rename; `once`: later renames (the rollback's) work."""
    real, renames = os.replace, []

    def replace(src, dst):
        if Path(dst).name.endswith(".safetensors") or Path(dst).name == "manifest.json":
            renames.append(dst)
            if len(renames) == at or (not once and len(renames) > at):
                raise error if error is not None else _Killed()
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def _regenerate_two_cases_and_die(tmp_path, monkeypatch, at):
    store, _ = _store(tmp_path, _case("a"), _case("b"))
    before = _files(store.root)
    txn = store.transaction()
    txn.stage(_case("a", scale=2.0))
    txn.stage(_case("b", scale=2.0))
    _fail_rename(monkeypatch, at)
    with pytest.raises(_Killed):
        txn.commit()
    monkeypatch.undo()
    txn.close()  # a killed process holds no lock
    return store.root, before


@pytest.mark.parametrize("at", [1, 2, 3], ids=["before-the-first-rename", "between-two-renames",
                                               "before-the-manifest"])
def test_a_commit_killed_between_renames_is_completed_by_the_next_open(tmp_path, monkeypatch, at):
    root, _ = _regenerate_two_cases_and_die(tmp_path, monkeypatch, at)
    assert (root / JOURNAL).is_file()
    store = GoldenStore(root)
    for case in ("a", "b"):  # loading verifies every sha256 against the (new) manifest
        np.testing.assert_array_equal(store.load("toy", case).value("out"), _case(scale=2.0).tensors["out"])
    assert not (root / JOURNAL).exists()
    assert not list(root.glob(".staging-*"))


def test_a_commit_killed_before_its_journal_is_removed_is_finished_by_the_next_open(tmp_path, monkeypatch):
    store, _ = _store(tmp_path, _case())
    txn = store.transaction()
    txn.stage(_case(scale=2.0))

    def die(root, journal):
        raise _Killed()

    monkeypatch.setattr(golden, "finish", die)
    with pytest.raises(_Killed):
        txn.commit()
    monkeypatch.undo()
    txn.close()
    np.testing.assert_array_equal(GoldenStore(store.root).load("toy", "a").value("out"),
                                  _case(scale=2.0).tensors["out"])
    assert not (store.root / JOURNAL).exists() and not list(store.root.glob(".staging-*"))


def test_a_killed_commit_whose_staged_file_was_damaged_is_rolled_back_by_the_next_open(tmp_path, monkeypatch):
    root, before = _regenerate_two_cases_and_die(tmp_path, monkeypatch, at=2)  # a moved, b not
    journal = json.loads((root / JOURNAL).read_text())
    pending = root / journal["moves"][1]["src"]
    pending.write_bytes(pending.read_bytes()[:-4])
    store = GoldenStore(root)
    assert store.load("toy", "a").taps and _files(root) == before  # the old golden, byte for byte


KILLED_IN_A_SUBPROCESS = """
import os, sys
from pathlib import Path
import numpy as np
from rvc_mlx.testing.golden import CaseData, GoldenStore, TapInfo

txn = GoldenStore(Path(sys.argv[1])).transaction()
for name in ("a", "b"):
    taps = {"x": TapInfo("x", (4,), 0, "Linear")}
    txn.stage(CaseData("toy", name, {"x": np.full(4, 2.0, np.float32)}, taps, {}, {}))
real, renames = os.replace, []

def replace(src, dst):
    if str(dst).endswith((".safetensors", "manifest.json")):
        renames.append(dst)
        if len(renames) == 2:
            os._exit(9)  # killed between the first and the second rename of the commit
    return real(src, dst)

os.replace = replace
txn.commit()
"""


def test_a_process_killed_mid_commit_leaves_a_journal_that_the_next_load_completes(tmp_path):
    root = tmp_path / "golden"
    one = {"x": TapInfo("x", (4,), 0, "Linear")}
    _store(tmp_path, *(CaseData("toy", n, {"x": np.ones(4, np.float32)}, dict(one), {}, {}) for n in "ab"))
    res = subprocess.run([sys.executable, "-c", KILLED_IN_A_SUBPROCESS, str(root)], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 9, res.stderr
    assert (root / JOURNAL).is_file() and list(root.glob(".staging-*"))
    store = GoldenStore(root)
    assert [store.load("toy", n).value("x").tolist() for n in "ab"] == [[2.0] * 4] * 2
    assert not (root / JOURNAL).exists() and not list(root.glob(".staging-*"))


def test_a_failed_rename_rolls_back_the_whole_commit_and_says_so_in_one_line(tmp_path, monkeypatch):
    store, _ = _store(tmp_path, _case("a"), _case("b"))
    before = _files(store.root)
    txn = store.transaction()
    txn.stage(_case("a", scale=2.0))
    txn.stage(_case("b", scale=2.0))
    _fail_rename(monkeypatch, 2, OSError(errno.EIO, "Input/output error"))
    with pytest.raises(GoldenError) as e:
        txn.commit()
    msg = _one_line_error(e)
    assert msg.startswith("committing the regenerated goldens failed ([Errno 5] Input/output error)")
    assert msg.endswith("golden/ is unchanged")
    assert _files(store.root) == before


def test_a_failed_rollback_leaves_the_journal_for_the_next_open_to_settle(tmp_path, monkeypatch):
    store, _ = _store(tmp_path, _case("a"), _case("b"))
    txn = store.transaction()
    txn.stage(_case("a", scale=2.0))
    txn.stage(_case("b", scale=2.0))
    _fail_rename(monkeypatch, 2, OSError(errno.EROFS, "Read-only file system"), once=False)
    with pytest.raises(GoldenError) as e:
        txn.commit()
    assert "the next run completes or rolls back" in _one_line_error(e)
    monkeypatch.undo()
    assert (store.root / JOURNAL).is_file()
    reopened = GoldenStore(store.root)
    assert {reopened.load("toy", n).value("out")[0] for n in "ab"} == {_case(scale=2.0).tensors["out"][0]}
    assert not (store.root / JOURNAL).exists() and not list(store.root.glob(".staging-*"))


def test_staging_dirs_of_killed_runs_are_removed_but_a_live_runs_is_kept(tmp_path):
    store, _ = _store(tmp_path, _case())
    dead = store.root / ".staging-killed"
    (dead / "toy").mkdir(parents=True)
    (dead / "toy" / "a.safetensors").write_bytes(b"x" * 100)
    live = store.transaction()
    assert not dead.exists() and live.staging.is_dir()
    dead.mkdir()
    assert GoldenStore(store.root).cases() == ["toy/a"]  # plain loading sweeps too
    assert not dead.exists() and live.staging.is_dir()
    live.abort()
    assert not list(store.root.glob(".staging-*"))


def _read_only(monkeypatch, root):
    """Make `root` behave as on a read-only filesystem for directory creation (works as root, unlike chmod)."""
    real = os.mkdir

    def mkdir(path, *args, **kwargs):
        if Path(path).resolve().is_relative_to(root.resolve()):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)


def test_a_read_only_golden_dir_fails_in_one_line_before_anything_is_staged(tmp_path, monkeypatch):
    store, _ = _store(tmp_path, _case())
    before = _files(store.root)
    _read_only(monkeypatch, store.root)
    with pytest.raises(GoldenError) as e:
        store.transaction()
    msg = _one_line_error(e)
    assert msg.startswith("cannot stage golden files in") and "Read-only file system" in msg
    assert msg.endswith("golden/ is unchanged")
    monkeypatch.undo()
    assert _files(store.root) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions; "
                    "test_a_read_only_golden_dir_fails_in_one_line_before_anything_is_staged covers it as root")
def test_a_golden_dir_without_write_permission_fails_in_one_line(tmp_path):
    store, _ = _store(tmp_path, _case())
    before = _files(store.root)
    store.root.chmod(0o555)
    try:
        with pytest.raises(GoldenError) as e:
            store.transaction()
    finally:
        store.root.chmod(0o755)
    assert "Permission denied" in _one_line_error(e)
    assert _files(store.root) == before


def test_a_failed_staging_write_stops_staging_and_nothing_is_committed(tmp_path, monkeypatch):
    store, _ = _store(tmp_path, _case("a"))
    before = _files(store.root)
    txn = store.transaction()

    def disk_full(path, blob):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(golden, "write_synced", disk_full)
    with pytest.raises(GoldenError) as e:
        txn.stage(_case("a", scale=2.0))
    msg = _one_line_error(e)
    assert msg == "staging golden toy/a failed ([Errno 28] No space left on device); golden/ is unchanged"
    monkeypatch.undo()
    with pytest.raises(GoldenError, match="staging golden toy/a failed"):
        txn.stage(_case("b"))
    with pytest.raises(GoldenError, match="staging golden toy/a failed"):
        txn.commit()
    assert _files(store.root) == before


# -- the same failures through the pytest plugin (`make golden`): one line, never a traceback or an INTERNALERROR

STAGE_A_TOY_CASE = """
import numpy as np
from rvc_mlx.testing.golden import CaseData, TapInfo

def test_stage_a_toy_case(parity):
    taps = {"x": TapInfo("x", (4,), 0, "Linear")}
    parity.txn.stage(CaseData("toy", "a", {"x": np.full(4, 2.0, np.float32)}, taps, {}, {}))
"""

READ_ONLY = """
import errno, os
from pathlib import Path

ROOT = Path({root!r}).resolve()
_mkdir = os.mkdir

def mkdir(path, *args, **kwargs):  # a read-only filesystem, as root too
    if Path(path).resolve().is_relative_to(ROOT):
        raise OSError(errno.EROFS, "Read-only file system", str(path))
    return _mkdir(path, *args, **kwargs)

os.mkdir = mkdir
"""

MANIFEST_RENAME_FAILS = """
import errno, os
from pathlib import Path

_replace = os.replace

def replace(src, dst):
    if Path(dst).name == "manifest.json":
        raise OSError(errno.EIO, "Input/output error", str(dst))
    return _replace(src, dst)

os.replace = replace
"""


def _plugin_golden(tmp_path):
    """A golden dir the plugin can open: the repository's tolerances and one toy case."""
    taps = {"x": TapInfo("x", (4,), 0, "Linear")}
    store, _ = _store(tmp_path, CaseData("toy", "a", {"x": np.ones(4, np.float32)}, taps, {}, {}))
    shutil.copy(GOLDEN / "tolerances.toml", store.root)
    return store.root


def _regen(pytester, root, conftest):
    pytester.makeconftest(conftest)
    pytester.makepyfile(STAGE_A_TOY_CASE)
    res = pytester.runpytest_subprocess("-p", "rvc_mlx.testing.plugin", "--regen-golden", "--golden-dir",
                                        str(root), "-p", "no:cacheprovider")
    text = res.stdout.str() + res.stderr.str()
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    return res, text


def test_make_golden_on_a_read_only_golden_dir_stops_in_one_line_before_any_case_runs(pytester, tmp_path):
    root = _plugin_golden(tmp_path)
    before = _files(root)
    res, text = _regen(pytester, root, READ_ONLY.format(root=str(root)))
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    errors = [ln for ln in text.splitlines() if "golden NOT regenerated" in ln]
    assert len(errors) == 1 and "cannot stage golden files in" in errors[0], text
    assert "Read-only file system" in errors[0] and "passed" not in text
    assert _files(root) == before


def test_make_golden_whose_commit_fails_reports_one_line_and_rolls_back(pytester, tmp_path):
    root = _plugin_golden(tmp_path)
    before = _files(root)
    res, text = _regen(pytester, root, MANIFEST_RENAME_FAILS)
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    errors = [ln for ln in text.splitlines() if "golden NOT regenerated" in ln]
    assert errors == ["golden NOT regenerated: committing the regenerated goldens failed ([Errno 5] Input/output "
                      f"error: '{root / 'manifest.json'}'); golden/ is unchanged"], text
    assert "1 passed" in text
    assert _files(root) == before


def test_refresh_errors_is_refused_without_regen_golden(pytester):
    pytester.makepyfile(INNER_TEST)
    res = pytester.runpytest_subprocess("-p", "rvc_mlx.testing.plugin", "--refresh-errors")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "--refresh-errors only applies with --regen-golden" in res.stderr.str()


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


STAGE_CHANGED_AND_NEW = """
import numpy as np
from rvc_mlx.testing.golden import CaseData, TapInfo

def test_stage(parity):
    taps = {"x": TapInfo("x", (4,), 0, "Linear"), "y": TapInfo("y", (2,), 1, "Linear")}
    values = {"x": np.array([1, 1, 1, 1.5], np.float32), "y": np.zeros(2, np.float32)}
    parity.txn.stage(CaseData("toy", "a", values, taps, {"seed": 2}, {}))
    parity.txn.stage(CaseData("toy", "b", {"x": np.ones(4, np.float32)}, {"x": taps["x"]}, {}, {}))
"""


def test_make_golden_writes_a_diff_page_naming_changed_cases_taps_and_provenance(pytester, tmp_path):
    from rvc_mlx.testing.golden import Staged
    from rvc_mlx.testing.golden_diff import case_diff
    from rvc_mlx.testing.tolerances import load_policy

    root = _plugin_golden(tmp_path)
    page = tmp_path / "reports" / "golden-diff.html"
    pytester.makepyfile(STAGE_CHANGED_AND_NEW)
    res = pytester.runpytest_subprocess("-p", "rvc_mlx.testing.plugin", "--regen-golden", "--golden-dir",
                                        str(root), "--golden-diff", str(page), "-p", "no:cacheprovider")
    assert res.ret == 0, res.stdout.str()
    res.stdout.fnmatch_lines([f"golden diff page: {page}"])
    text = page.read_text()
    assert "2 cases regenerated, 0 kept" in text and "<h2>toy/a (changed)</h2>" in text
    assert "<h2>toy/b (new)</h2>" in text and "input.seed: absent -&gt; 2" in text
    assert "<td>x</td><td>changed</td>" in text and "<td>y</td><td>added</td>" in text
    # the numbers: max |new-old| = 0.5 on a range of 1, against x's tolerance
    old = CaseData("toy", "a", {"x": np.ones(4, np.float32)}, {"x": TapInfo("x", (4,), 0, "Linear")}, {}, {})
    new = CaseData("toy", "a", {"x": np.array([1, 1, 1, 1.5], np.float32)},
                   {"x": TapInfo("x", (4,), 0, "Linear", torch32={"max_rel": 1e-6})}, {}, {})
    row = case_diff(Staged({}, new, "changed", "golden toy/a: changed", None, old),
                    load_policy(GOLDEN / "tolerances.toml"))["rows"][0]
    assert row["max_delta"] == 0.5 and row["rel_range"] == 0.5 and 0 < row["rel_tolerance"] < 0.5 / 4e-6
