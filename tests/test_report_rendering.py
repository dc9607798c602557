"""The HTML reports as a person sees them: headless Chromium renders reports/parity.html (tables and the embedded
error-vs-depth plots) and reports/golden-diff.html (tables). Slow: run by `make parity`, which installs Chromium."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rvc_mlx.testing import golden_diff, report
from rvc_mlx.testing.golden import CaseData, Staged, TapInfo

FIX = "as root: apt-get install chromium (make parity does this)"


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail(f"headless Chromium is needed to check the HTML reports: {FIX}", pytrace=False)
    return exe


def _render(page, tmp_path) -> tuple[str, np.ndarray]:
    """(the DOM after Chromium loaded `page`, a screenshot of it as an RGB array)."""
    exe, shot = _chromium(), tmp_path / f"{page.stem}.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'p'}"]
    dom = subprocess.run([exe, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "<table" in dom.stdout, dom.stderr[-2000:]
    subprocess.run([exe, *flags, "--window-size=1400,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    import matplotlib.image

    return dom.stdout, matplotlib.image.imread(shot)[..., :3]


def _colours(img: np.ndarray) -> int:
    return len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0))


@pytest.mark.slow
@pytest.mark.parity
def test_chromium_renders_the_parity_report_with_its_tables_and_plots(parity, tmp_path):
    html_path = report.write(tmp_path / "parity.json", [parity.check("rmvpe", "harmonic", record=False)],
                             parity.policy)
    dom, img = _render(html_path, tmp_path)
    assert dom.count("<table") >= 2 and "data:image/png;base64," in dom
    assert img.std() > 0.05 and _colours(img) > 200, "the plots did not render (too few colours on the page)"


@pytest.mark.slow
def test_chromium_renders_the_golden_diff_page_with_its_tables(tmp_path):
    from rvc_mlx.testing.tolerances import load_policy

    taps = {"x": TapInfo("x", (4,), 0, "Linear", torch32={"max_rel": 1e-6})}
    old = CaseData("synth", "v2-40k-f0", {"x": np.ones(4, np.float32)}, taps, {}, {"seed": 0})
    new = CaseData("synth", "v2-40k-f0", {"x": np.array([1, 1, 1, 1.5], np.float32)}, taps, {}, {"seed": 1})
    policy = load_policy(Path(__file__).resolve().parents[1] / "golden" / "tolerances.toml")
    staged = {new.key: Staged({}, new, "changed", "golden synth/v2-40k-f0: weights changed", None, old)}
    page = golden_diff.write(tmp_path / "golden-diff.html", staged, policy)
    dom, img = _render(page, tmp_path)
    assert "synth/v2-40k-f0 (changed)" in dom and "weights.seed: 0 -&gt; 1" in dom and "<td>x</td>" in dom
    assert img.std() > 0.01, "the page rendered blank"
