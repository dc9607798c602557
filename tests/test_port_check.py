"""Goldens for other implementations: case bundles whose limits are the harness's, and `rvc-mlx check` judging
foreign activation dumps (renamed modules, MLX layouts, missing and unexpected taps, bad files) without torch
or MLX."""

import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from rvc_mlx.testing import bundle, foreign
from rvc_mlx.testing.compare import compare_case
from rvc_mlx.testing.components import REPO, registry
from rvc_mlx.testing.metrics import tensor_metrics
from rvc_mlx.testing.taps import from_torch_layout

# The seed Swift port's names (issue 19): lists became numbered properties, and only the coupling layers of the
# flow are modules there.
SWIFT_MAP = """
[names]
"dec.ups.{i}" = "dec.up_{i}"
"flow.flows.{2i}" = "flow.flow_{i}"
"enc_p.encoder.attn_layers.{i}" = "enc_p.encoder.attn_{i}"
"""

# runs `rvc-mlx ...` with torch and MLX unimportable: the check must not need them
NO_TORCH_NO_MLX = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "mlx"):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Block())
from rvc_mlx.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cli(*args):
    res = subprocess.run([sys.executable, "-c", NO_TORCH_NO_MLX, *map(str, args)], capture_output=True, text=True,
                         cwd=REPO)
    return res.returncode, res.stdout, res.stderr


def _golden_dump(store, component, case, path, rename=None, layout=None):
    """A dump holding the golden values themselves (renamed, converted to a layout): what a perfect port writes."""
    ref = store.load(component, case)
    out = {}
    for name in ref.taps:
        value = ref.value(name)
        if layout is not None:
            value = from_torch_layout(value, layout(name), name)
        out[rename(name) if rename else name] = np.ascontiguousarray(value)
    save_file(out, str(path))
    return out


def test_bundle_limits_are_what_the_harness_applies_for_every_tap_of_every_case(store, policy):
    comps = registry()
    for key in sorted(store.manifest()["cases"]):
        component, case = key.split("/", 1)
        comp = comps[component]
        ref = store.load(component, case)
        taps = bundle.describe_taps(comp, comp.spec.case(case), ref, policy)
        judged = {t.name: t for t in compare_case(ref, {n: ref.value(n) for n in ref.taps}, policy,
                                                  comp.pitch_ignore(ref, policy)).taps}
        ignore = comp.pitch_ignore(ref, policy)
        assert [t["name"] for t in taps] == [t.name for t in ref.ordered()], key
        for t in taps:
            res, value = judged[t["name"]], ref.value(t["name"]).astype(np.float64)
            if t["kind"] == "tensor":
                assert {c.metric: c.limit for c in res.checks} == {m: v["relative"] for m, v in t["limits"].items()}
                # the absolute limits mean the same: an error just inside passes the metric, just outside fails
                m = t["limits"]["max_rel"]
                spike = np.zeros(value.size)
                spike[int(np.argmax(np.abs(value)))] = 1.0
                spike = spike.reshape(value.shape)
                for f, ok in ((0.99, True), (1.01, False)):
                    got = tensor_metrics(value + f * m["absolute"] * spike, value)["max_rel"]
                    assert (got <= m["relative"]) is ok or m["absolute"] == 0, (key, t["name"], f)
                    r = t["limits"]["rmse_rel"]
                    got = tensor_metrics(value + f * r["absolute"], value)["rmse_rel"]
                    assert (got <= r["relative"]) is ok or r["absolute"] == 0, (key, t["name"], f)
            elif t["kind"] == "f0":
                assert t["limits"] == {"cents_p99": policy.pitch.cents_p99,
                                       "voicing_agreement": policy.pitch.voicing_agreement}
                expected = np.flatnonzero(ignore[t["name"]]).tolist() if t["name"] in ignore else None
                assert t.get("ignore_frames") == expected, (key, t["name"])
            else:
                assert t["limits"] == {"exact": True}


def test_export_writes_inputs_weights_expected_taps_and_case_json(store, policy, tmp_path):
    comp = registry()["synth"]
    out = bundle.export("synth", "v2-32k-nof0", tmp_path / "b", store, policy)
    assert sorted(p.name for p in out.iterdir()) == sorted(bundle.FILES)
    doc = json.loads((out / "case.json").read_text())
    assert doc["format"] == bundle.FORMAT and doc["component"] == "synth" and doc["case"] == "v2-32k-nof0"
    inputs, _ = comp.load_input(comp.spec.case("v2-32k-nof0"))
    got = load_file(str(out / "inputs.safetensors"))
    np.testing.assert_array_equal(got["features"], inputs["features"])
    np.testing.assert_array_equal(got["noise.eps_zp"], inputs["noise"].eps_zp)
    assert doc["inputs"]["scalars"]["speaker_id"] == 5 and doc["inputs"]["injected_noise"] == []
    weights = load_file(str(out / "weights.safetensors"))
    state = comp.state_dict(comp.weights(None, comp.spec.case("v2-32k-nof0")).path)
    assert sorted(weights) == sorted(state) and all(np.array_equal(weights[k], state[k]) for k in state)
    expected = load_file(str(out / "expected.safetensors"))
    ref = store.load("synth", "v2-32k-nof0")
    assert sorted(expected) == sorted(ref.taps)
    assert all(np.array_equal(expected[n], ref.value(n)) for n in ref.taps)
    enc = next(t for t in doc["taps"] if t["name"] == "enc_p:0")
    assert enc["layout"] == "NCL" and enc["mlx_layout"] == "NLC" and enc["shape"] == list(ref.taps["enc_p:0"].shape)


def test_check_passes_a_perfect_dump_without_torch_or_mlx(store, tmp_path):
    _golden_dump(store, "rmvpe", "harmonic", tmp_path / "dump.safetensors")
    rc, out, err = _cli("check", tmp_path / "dump.safetensors", "rmvpe", "harmonic")
    assert rc == 0, out + err
    assert out.splitlines()[0].startswith("rmvpe/harmonic (golden; dump path") and "taps pass" in out


def test_check_on_a_file_that_is_not_safetensors_exits_2_in_one_line(tmp_path):
    bad = tmp_path / "acts.npz"
    bad.write_bytes(b"PK\x03\x04 not a safetensors file")
    rc, out, err = _cli("check", bad, "rmvpe", "harmonic")
    assert rc == 2 and out == "" and len(err.splitlines()) == 1, (out, err)
    assert err.startswith(f"rvc-mlx: {bad}: not a safetensors file"), err


def test_a_renamed_tap_the_map_does_not_cover_is_missing_not_a_pass(store, tmp_path):
    dump = tmp_path / "dump.safetensors"
    _golden_dump(store, "rmvpe", "harmonic", dump,
                 rename=lambda n: n.replace("unet.decoder.layers.3", "unet.decoder.block_3"))
    rc, out, err = _cli("check", dump, "rmvpe", "harmonic")
    assert rc == 1, out + err
    first = out.splitlines()[0]
    assert "first divergence at unet.decoder.layers.3 (" in first
    assert "not in the dump under 'unet.decoder.layers.3'" in first
    assert "in the dump but no golden tap maps to them (1): unet.decoder.block_3" in out


def test_name_map_renames_by_globs_and_index_arithmetic(tmp_path):
    path = tmp_path / "map.toml"
    path.write_text(SWIFT_MAP + '"*.convs1.{i}" = "*.c1_{i+1}"\n[absent]\ntaps = ["flow.flows.[1357]"]\n')
    m = foreign.NameMap.read(path)
    assert m.dump_name("dec.ups.0") == "dec.up_0"
    assert m.dump_name("flow.flows.2") == "flow.flow_1"
    assert m.dump_name("flow.flows.6.enc.in_layers.0") == "flow.flow_3.enc.in_layers.0"  # children follow
    assert m.dump_name("flow.flows.3") == "flow.flows.3"  # odd: not 2i
    assert m.dump_name("flow.flows.20") == "flow.flow_10"
    assert m.dump_name("flow.flows.2x") == "flow.flows.2x"  # only whole path components match
    assert m.dump_name("enc_p.encoder.attn_layers.1:0") == "enc_p.encoder.attn_1:0"
    assert m.dump_name("dec.resblocks.4.convs1.2") == "dec.resblocks.4.c1_3"
    assert m.is_absent("flow.flows.5") and not m.is_absent("flow.flows.4")
    path.write_text('[names]\n"a.*" = "b"\n')
    with pytest.raises(foreign.DumpError, match="as many `\\*` on both sides"):
        foreign.NameMap.read(path)
    path.write_text('[names]\n"dec.ups.{i}" = "dec.up_{j}"\n')
    with pytest.raises(foreign.DumpError, match="uses \\{j\\}, which the golden side does not bind"):
        foreign.NameMap.read(path)


def test_extra_taps_layouts_are_the_ones_mlx_records(parity):
    """The check's --layout mlx (and bundles' `mlx_layout`) must be the layouts the MLX port really holds taps in:
    compared with a recording of every tap of two cases."""
    import mlx.nn as nn  # noqa: F401  (the recording needs MLX; the check itself does not)

    from rvc_mlx.testing.taps import MLXRecorder

    for component, case in (("synth", "v2-40k-f0-all"), ("rmvpe", "speech")):
        comp = parity.component(component)
        spec = comp.spec.case(case)
        w = parity.weights(comp, case)
        inputs, _ = comp.load_input(spec)
        model = comp.mlx(w)
        ref = parity.store.load(component, case)
        with comp.constants(spec, model), MLXRecorder(comp.mlx_module(model), comp.layouts, root=comp.root,
                                                      select=list(ref.taps), layer_by_layer=True) as rec:
            comp.run_mlx(model, inputs)
        assert set(rec.layouts_used) == set(ref.taps)
        for name, info in ref.taps.items():
            assert foreign.mlx_layout(comp, name, info.module_type) == rec.layouts_used[name], (case, name)


def _swift_dump(parity, path, tmp_path, flip_after=False):
    """Our MLX port's taps of a synthesizer case as the seed Swift port would dump them: renamed per SWIFT_MAP, in
    MLX's channels-last layouts. `flip_after` plants the Swift port's bug: each Flip after its coupling layer."""
    from rvc_mlx.synthesizer.flow import ResidualCouplingBlock
    from rvc_mlx.testing.taps import MLXRecorder

    comp = parity.component("synth")
    spec = comp.spec.case("v2-40k-f0-all")
    model = comp.mlx(parity.weights(comp, "v2-40k-f0-all"))
    inputs, _ = comp.load_input(spec)
    original = ResidualCouplingBlock.__call__

    def flip_after_coupling(self, x, x_mask, g=None, reverse=True):
        flows = list(reversed(self.flows))  # [Flip, L3, Flip, L2, ...] -> [L3, Flip, L2, Flip, ...]
        for i in range(0, len(flows), 2):
            for flow in (flows[i + 1], flows[i]):
                x = flow(x, x_mask, g=g, reverse=reverse)
        return x

    taps = list(parity.store.load("synth", "v2-40k-f0-all").taps)
    try:
        if flip_after:
            ResidualCouplingBlock.__call__ = flip_after_coupling
        with comp.constants(spec, model), MLXRecorder(comp.mlx_module(model), comp.layouts, root=comp.root,
                                                      select=taps, layer_by_layer=True) as rec:
            comp.run_mlx(model, inputs)
    finally:
        ResidualCouplingBlock.__call__ = original
    names = tmp_path / "swift.toml"
    names.write_text(SWIFT_MAP)
    m = foreign.NameMap.read(names)
    dump = {m.dump_name(n): np.ascontiguousarray(from_torch_layout(v, rec.layouts_used[n], n))
            for n, v in rec.values().items()}
    save_file(dump, str(path))
    return names


def test_a_swift_style_dump_of_the_mlx_port_passes_with_the_name_map_and_mlx_layouts(parity, tmp_path):
    dump = tmp_path / "swift.safetensors"
    names = _swift_dump(parity, dump, tmp_path)
    assert "flow.flow_3" in load_file(str(dump)) and "dec.up_0" in load_file(str(dump))
    rc, out, err = _cli("check", dump, "synth", "v2-40k-f0-all", "--names", names, "--layout", "mlx")
    assert rc == 0, out + err
    rc, out, err = _cli("check", dump, "synth", "v2-40k-f0-all", "--names", names)  # channels-last read as torch
    assert rc == 1 and "dump shape" in out.splitlines()[0], out + err


def test_a_swift_style_dump_with_the_flip_after_each_coupling_layer_is_blamed_on_the_flow(parity, tmp_path):
    dump = tmp_path / "swift.safetensors"
    names = _swift_dump(parity, dump, tmp_path, flip_after=True)
    rc, out, err = _cli("check", dump, "synth", "v2-40k-f0-all", "--names", names, "--layout", "mlx",
                        "--report", tmp_path / "r" / "check.json")
    assert rc == 1, out + err
    # in reverse the flow runs flows.7 (the last Flip) first: with the Flip moved after its coupling layer, that
    # Flip's output is the first value that differs
    first = out.splitlines()[0]
    assert "first divergence at flow.flows.7 (Flip)" in first, first
    report = json.loads((tmp_path / "r" / "check.json").read_text())
    assert report["components"]["synth"]["cases"][0]["blame_tap"] == "flow.flows.7"
    assert (tmp_path / "r" / "check.html").is_file()


def test_a_pipeline_bundle_carries_each_segments_noise_as_the_twin_drew_it(store):
    """The injected noise a port reads from inputs.safetensors is the noise the oracle ran with (its eps_zp is also
    a golden tap per segment)."""
    comp = registry()["pipeline"]
    case = comp.spec.case("stereo44k-segments-v2-32k-f0")
    ref = store.load("pipeline", case.name)
    noise = bundle._injected(comp, case, ref)
    segments = ["pipeline.synth.noise", "pipeline.synth.noise#2", "pipeline.synth.noise#3"]
    assert sorted(noise) == sorted(f"segment{i}.noise.{k}" for i in range(3) for k in ("eps_zp", "eps_sine"))
    for i, tap in enumerate(segments):
        np.testing.assert_array_equal(noise[f"segment{i}.noise.eps_zp"], ref.value(tap))
        assert noise[f"segment{i}.noise.eps_sine"].shape == (1, ref.taps[tap].shape[-1] * 320, 1)  # 32k: upp 320


def test_a_nan_in_a_dump_is_reported_as_the_first_non_finite_tap(store, tmp_path):
    dump = tmp_path / "dump.safetensors"
    values = _golden_dump(store, "rmvpe", "harmonic", dump)
    values["unet.decoder.layers.2"] = values["unet.decoder.layers.2"].copy()
    values["unet.decoder.layers.2"][0, 3, 1, 2:5] = np.nan
    save_file(values, str(dump))
    rc, out, err = _cli("check", dump, "rmvpe", "harmonic")
    assert rc == 1, out + err
    assert ("first non-finite value at unet.decoder.layers.2 (ResDecoderBlock): 3 of" in out.splitlines()[0]
            and "dump values are NaN or Inf" in out.splitlines()[0]), out


def test_a_per_tap_layout_file_converts_the_taps_it_names(store, tmp_path):
    dump = tmp_path / "dump.safetensors"
    channels_last = "unet.decoder.layers.[0-9]"  # a port holding only the decoder blocks channels-last
    _golden_dump(store, "rmvpe", "harmonic", dump,
                 layout=lambda n: "NHWC" if foreign.fnmatch.fnmatchcase(n, channels_last) else "same")
    layouts = tmp_path / "layouts.toml"
    layouts.write_text(f'"{channels_last}" = "NHWC"\n')
    rc, out, err = _cli("check", dump, "rmvpe", "harmonic", "--layout", layouts)
    assert rc == 0, out + err
    layouts.write_text('"unet.decoder.layers.[0-9]" = "NCHW"\n')
    rc, out, err = _cli("check", dump, "rmvpe", "harmonic", "--layout", layouts)
    assert rc == 2 and "unknown layouts" in err and len(err.splitlines()) == 1, err


def test_export_refuses_a_golden_made_from_other_weights(store, policy, monkeypatch):
    comp = registry()["fcpe"]
    real = type(comp).weights

    def other_weights(self, weights_dir, case=None):
        w = real(self, weights_dir, case)
        return type(w)(w.path, {**w.info, "sha256": "0" * 64})

    monkeypatch.setattr(type(comp), "weights", other_weights)
    with pytest.raises(bundle.GoldenError, match="golden fcpe/speech was made from other weights"):
        bundle.build("fcpe", "speech", store, policy)
