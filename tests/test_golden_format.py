"""docs/golden-format.md against the code it documents: the format strings, every case.json key the bundle writer
emits (and none it does not), the name-map example's renames, and the worked example's output. A change to either
side without the other fails here."""

import json
import re

import numpy as np
import pytest

from rvc_mlx.testing import bundle, foreign, golden
from rvc_mlx.testing.components import REPO, registry
from rvc_mlx.testing.taps import from_torch_layout

DOC = REPO / "docs" / "golden-format.md"
# A small real bundle (2 MB of weights, ~1 s): tensor and f0 taps, ignore_frames, injected noise, constants.
SMALL = ("crepe", "tiny-speech-restarts")
# Only pipeline cases have discrete taps; their tap entries are described without exporting 600 MB of weights.
DISCRETE = ("pipeline", "speech-v2-40k-f0")
# Objects whose keys are data (scalar inputs, provenance records, constants): documented as a whole, not per key.
OPAQUE = {"inputs.scalars", "inputs.provenance", "constants", "mlx_only_constants", "weights.provenance"}
NAMED = {"inputs.arrays"}  # keys are array names: documented as `<name>`


@pytest.fixture(scope="module")
def doc():
    return DOC.read_text()


def section(text: str, title: str) -> str:
    """The body of the heading that starts with `title`, up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"(#+) (.*)", line)
        if m and m.group(2).startswith(title):
            level, body = len(m.group(1)), []
            for rest in lines[i + 1:]:
                h = re.match(r"(#+) ", rest)
                if h and len(h.group(1)) <= level:
                    break
                body.append(rest)
            return "\n".join(body)
    raise AssertionError(f"{DOC.name} has no section {title!r}")


def fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


def key_paths(value, path: str = "") -> set[str]:
    """Every key of a case.json document as a path (`a.b`, `[]` for list elements, `<name>` for named arrays)."""
    out = set()
    if isinstance(value, dict):
        for k, v in value.items():
            p = f"{path}.<name>" if path in NAMED else f"{path}.{k}" if path else k
            out.add(p)
            if p not in OPAQUE:
                out |= key_paths(v, p)
    elif isinstance(value, list):
        for v in value:
            out |= key_paths(v, f"{path}[]")
    return out


@pytest.fixture(scope="module")
def writer_keys(store, policy, tmp_path_factory):
    """The keys the writer emits: a real bundle's case.json, plus the tap entries of a case with discrete taps."""
    out = bundle.export(*SMALL, tmp_path_factory.mktemp("bundle"), store, policy)
    keys = key_paths(json.loads((out / "case.json").read_text()))
    component, case = DISCRETE
    comp = registry()[component]
    taps = bundle.describe_taps(comp, comp.spec.case(case), store.load(component, case), policy)
    keys |= key_paths({"taps": json.loads(json.dumps(taps))})
    # the cases must keep covering the optional keys, or this test would stop checking them
    assert {"taps[].ignore_frames", "taps[].limits.exact", "taps[].limits.cents_p99",
            "taps[].limits.max_rel.absolute"} <= keys
    return keys


def documented_keys(doc: str) -> set[str]:
    text = section(doc, "Case bundles")
    return set(re.findall(r"^\|\s*`([^`]+)`\s*\|", text, re.M))


def test_doc_states_the_manifest_and_case_bundle_format_versions_verbatim(doc):
    versions = section(doc, "Versions")
    for value in (golden.MANIFEST_FORMAT, bundle.FORMAT):
        stated = f'"format": {json.dumps(value)}'
        assert re.search(re.escape(stated) + r"(?![\w./-])", versions), f"{DOC.name} Versions lacks {stated}"


def test_every_case_json_key_the_writer_emits_is_in_the_doc_table(doc, writer_keys):
    missing = sorted(writer_keys - documented_keys(doc))
    assert not missing, f"case.json keys the writer emits but {DOC.name} does not list: {missing}"


def test_every_case_json_key_in_the_doc_table_is_one_the_writer_emits(doc, writer_keys):
    extra = sorted(documented_keys(doc) - writer_keys)
    assert not extra, f"{DOC.name} lists case.json keys the writer does not emit: {extra}"


def test_the_doc_name_map_example_parses_and_renames_as_documented(doc, tmp_path):
    text = section(doc, "Producing a dump")
    blocks = [b for b in fenced(text, "toml") if "[names]" in b]
    assert len(blocks) == 1, "the dump section should have one name-map example"
    path = tmp_path / "names.toml"
    path.write_text(blocks[0])
    names = foreign.NameMap.read(path)
    renames = re.findall(r"^- `([^`]+)` -> `([^`]+)`$", text, re.M)
    absent = re.findall(r"^- `([^`]+)` -> absent$", text, re.M)
    assert len(renames) >= 5 and absent, "the example's documented renames are gone"
    for golden_name, dump_name in renames:
        assert names.dump_name(golden_name) == dump_name, golden_name
        assert not names.is_absent(golden_name), golden_name
    for golden_name in absent:
        assert names.is_absent(golden_name), golden_name


def test_the_worked_example_dump_passes_with_the_output_the_doc_quotes(doc, store, policy, tmp_path, monkeypatch):
    """The worked example's map and channels-last perfect dump, judged in-process as `rvc-mlx check` would."""
    text = section(doc, "Worked example")
    (map_text,) = [b for b in fenced(text, "toml") if "[names]" in b]
    quoted = next(b for b in fenced(text, "text") if "taps pass" in b).splitlines()
    monkeypatch.chdir(tmp_path)  # the output names the map by the path given, as the CLI does
    (tmp_path / "rmvpe-port.toml").write_text(map_text)
    names = foreign.NameMap.read("rmvpe-port.toml")
    comp, ref = registry()["rmvpe"], store.load("rmvpe", "harmonic")
    dump = {names.dump_name(i.name): np.ascontiguousarray(from_torch_layout(
                ref.value(i.name), foreign.mlx_layout(comp, i.name, i.module_type), i.name))
            for i in ref.ordered() if not names.is_absent(i.name)}
    done = foreign.check(dump, "rmvpe", "harmonic", store, policy, names, "mlx", label="dump.safetensors")
    assert done.passed and not done.unexpected
    assert done.message().splitlines() == quoted
