"""Every boundary the shipped code has is crossed by a judged golden case: cases set a constant smaller (the same
code; the default stays the original's everywhere else) and the harness fails a case that no longer crosses the
boundary it declares. Where the boundary changes the result (RMVPE's chunks, CREPE's viterbi restarts), the case's
input is one on which it does, so a misplaced boundary fails the comparison."""

import dataclasses

import numpy as np

from rvc_common.config import CREPEConfig, PipelineConfig, RMVPEConfig
from rvc_mlx import dispatch
from rvc_mlx.testing.components import load_specs


def test_the_constants_cases_shrink_default_to_the_originals():
    assert RMVPEConfig().chunk_frames == 32000
    assert CREPEConfig().batch_size == 512
    p = PipelineConfig()
    assert (p.x_pad, p.x_query, p.x_center, p.x_max) == (1, 6, 38, 41)
    assert (p.t_pad, p.t_query, p.t_center, p.t_max) == (16000, 96000, 608000, 656000)
    assert (dispatch.ATTENTION_CHUNK_BYTES, dispatch.RESBLOCK_CHUNK_BYTES) == (64 << 20, 4 << 20)
    assert dispatch.settings().attention_rows is None and dispatch.settings().resblock_frames is None


def test_each_boundary_is_declared_by_a_golden_case():
    crosses = {work: f"{c.component}/{c.name}" for s in load_specs().values() for c in s.cases for work in c.crosses}
    assert {"hubert attention query chunks", "rmvpe mel chunks", "synth resblock time chunks",
            "crepe viterbi batches", "pipeline segments", "input channels mixed",
            "input resampled from 44100 Hz"} <= set(crosses), crosses


def test_a_case_that_no_longer_crosses_its_boundary_fails(parity, monkeypatch):
    comp = parity.component("hubert")
    spec = comp.spec.case("speech")
    cases = [dataclasses.replace(c, constants={}) if c is spec else c for c in comp.spec.cases]
    monkeypatch.setattr(comp.spec, "cases", cases)  # the chunk size back to its default: 7 frames in one chunk
    result = parity.check("hubert", "speech", record=False)
    assert not result.passed and not result.failing
    assert result.problems == ["hubert/speech: the shipped run did 'hubert attention query chunks' in 0 piece(s), "
                               "the case needs >= 3: it no longer crosses the boundary it exists for "
                               "(golden/cases.toml `crosses`)"]


def test_rmvpe_chunk_boundary_changes_the_salience_of_its_case(parity):
    comp = parity.component("rmvpe")
    spec = comp.spec.case("speech-chunks")
    audio, _ = comp.load_input(spec)
    model = comp.mlx(parity.weights(comp, spec.name))
    chunked = model.salience(audio, chunk_frames=spec.constants["chunk_frames"])
    whole = model.salience(audio)
    golden = parity.store.load("rmvpe", spec.name).value("rmvpe.salience")
    # the boundary's effect is far above the tolerance: a chunk placed elsewhere fails the golden comparison
    assert np.max(np.abs(whole - chunked)) > 100 * np.max(np.abs(chunked - golden))


def test_crepe_viterbi_decoding_of_its_case_depends_on_where_each_restart_falls(parity):
    comp = parity.component("crepe")
    spec = comp.spec.case("tiny-speech-restarts")
    audio, _ = comp.load_input(spec)
    model = comp.mlx(parity.weights(comp, spec.name))
    f0 = {}
    for batch in (spec.constants["batch_size"], 80, 512):
        with comp.constants(dataclasses.replace(spec, constants={"batch_size": batch}), model):
            f0[batch] = model.f0(audio, seed=0)
    cents = lambda a, b: np.abs(1200 * np.log2(a[(a > 0) & (b > 0)] / b[(a > 0) & (b > 0)]))  # noqa: E731
    for other in (80, 512):  # restarts elsewhere decode other paths (or voicing) on this input
        a, b = f0[64], f0[other]
        assert np.any((a > 0) != (b > 0)) or np.max(cents(a, b)) > 10, other
