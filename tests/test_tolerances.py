"""Tolerance policy: defaults from golden/tolerances.toml; an override needs a written reason."""

import pytest

from rvc_mlx.testing.components import GOLDEN
from rvc_mlx.testing.tolerances import ToleranceError, load_policy


def test_committed_policy_is_k4_with_a_small_floor_and_no_override_without_reason():
    p = load_policy(GOLDEN / "tolerances.toml")
    assert p.K == 4.0 and 0 < p.floor <= 1e-6
    assert set(p.metrics) == {"max_rel", "rmse_rel"}
    for o in p.overrides:
        assert len(o.reason) >= 20


def test_override_without_reason_is_refused(tmp_path):
    f = tmp_path / "tol.toml"
    f.write_text('[policy]\nK = 4\n[[override]]\ncomponent = "rmvpe"\ntaps = "fc.*"\nK = 10\n')
    with pytest.raises(ToleranceError, match="override #1 .*has no written reason"):
        load_policy(f)


def test_override_with_reason_applies_to_matching_taps_only(tmp_path):
    f = tmp_path / "tol.toml"
    f.write_text('[policy]\nK = 4\nfloor = 1e-6\n[[override]]\ncomponent = "synth*"\ntaps = "dec.m_source*"\n'
                 'K = 20\nreason = "phase accumulation over 16000 samples amplifies f0 rounding"\n')
    p = load_policy(f)
    r = p.rule("synthesizer", "dec.m_source.l_linear")
    assert r.K == 20 and r.floor == 1e-6 and "phase" in r.reason
    assert p.rule("synthesizer", "dec.ups.0").K == 4 and p.rule("rmvpe", "dec.m_source").K == 4
    assert r.limit(1e-7) == pytest.approx(20 * 1e-7 + 1e-6)


def test_malformed_policy_file_names_itself(tmp_path):
    f = tmp_path / "tol.toml"
    f.write_text("[policy\nK=")
    with pytest.raises(ToleranceError, match="tol.toml: not valid TOML"):
        load_policy(f)
