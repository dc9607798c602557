"""CREPE (full, tiny) and FCPE with their shipped trained weights: the MLX ports match the golden float64 oracle at
every stored tap, and their F0 on real speech agrees with the twin's (cents p99 <= 1, voicing >= 99.9 %)."""

import pytest

from rvc_mlx.testing.components import case_paths

CASES = [pytest.param(comp, *p.values, marks=p.marks, id=f"{comp}/{p.id}")
         for comp in ("crepe", "fcpe") for p in case_paths(comp)]


@pytest.mark.parity
@pytest.mark.parametrize("component, case, path", CASES)
def test_pitch_estimator_every_tap_matches_golden_within_policy(parity, component, case, path):
    result = parity.check(component, case, path=path)
    assert result.passed, result.failure_message()
    f0 = next(t for t in result.taps if t.name == f"{component}.f0")
    assert f0.pitch["cents_p99"] <= 1.0 and f0.pitch["voicing_agreement"] >= 0.999, f0.pitch
    if "speech" in case and "taps" not in case and "blocks" not in case:
        assert f0.pitch["voiced_both"] >= 40, "the speech case should hold voiced frames"


@pytest.mark.parity
@pytest.mark.parametrize("component, case", [("crepe", "tiny-harmonic"), ("crepe", "full-harmonic"),
                                             ("fcpe", "harmonic")], ids=["crepe-tiny", "crepe-full", "fcpe"])
def test_pitch_estimator_finds_the_known_f0_of_the_harmonic_input(parity, component, case):
    """Trained weights on a tone of known F0: both implementations track it (reported in parity.html)."""
    result = parity.check(component, case)
    truth = result.extra["truth"][f"{component}.f0"]
    for side in ("mlx", "reference"):
        assert truth[side]["raw_pitch_accuracy"] >= 0.9, (side, truth[side])
        assert truth[side]["voicing_recall"] >= 0.9, (side, truth[side])


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("component, case", [("crepe", "tiny-speech-taps"), ("crepe", "full-speech-blocks"),
                                             ("fcpe", "speech-taps")], ids=["crepe-tiny", "crepe-full", "fcpe"])
def test_pitch_estimator_every_module_passes_teacher_forced_against_live_oracle(parity, component, case):
    result = parity.check(component, case, live=True, teacher=True)
    assert result.passed, result.failure_message()
    for res in (result, result.layers):
        local = [t for t in res.taps if t.local is not None]
        assert local, f"teacher forcing judged no module on the {res.path} path"
        bad = [f"{t.name}: {t.local}" for t in local if not t.local["passed"]]
        assert not bad, f"teacher-forced local errors out of tolerance ({res.path}):\n" + "\n".join(bad)


@pytest.mark.parity
@pytest.mark.parametrize("component, case", [("crepe", "tiny-speech-taps"), ("crepe", "tiny-harmonic-taps"),
                                             ("fcpe", "speech-taps"), ("fcpe", "harmonic-taps")])
def test_pitch_estimator_golden_covers_every_module(parity, component, case):
    """Every module the twin calls (a fresh recording) has a stored tap, except the declared duplicates."""
    import torch

    from rvc_mlx.testing.taps import TorchRecorder

    comp = parity.component(component)
    twin = comp.twin(parity.weights(comp, case), torch.float32)
    audio, _ = comp.load_input(comp.spec.case(case))
    with TorchRecorder(comp.twin_module(twin), root=comp.root) as rec:
        comp.run_twin(twin, audio)
    skipped = set(comp.spec.exclude_types) | set(comp.spec.unstored_types)
    expected = {n for n, r in rec.records.items() if r.module_type not in skipped}
    assert len(expected) > 15
    golden = parity.store.load(component, case)
    assert not expected - set(golden.taps), f"modules without a golden tap: {sorted(expected - set(golden.taps))}"
    assert {f"{component}.f0"} <= set(golden.taps)


@pytest.mark.parity
@pytest.mark.parametrize("case", ["full-speech-blocks", "full-harmonic-blocks"])
def test_full_crepe_golden_keeps_every_block_after_conv1(parity, case):
    golden = parity.store.load("crepe", case)
    blocks = {f"conv{i}_BN" for i in range(2, 7)} | {"classifier", "crepe.frames", "crepe.probabilities",
                                                     "crepe.periodicity", "crepe.f0"}
    assert blocks <= set(golden.taps)
