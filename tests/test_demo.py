"""The demo study end to end, and the report it writes (HTML with embedded figures + Markdown)."""

import base64
import io
import warnings
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread
from _docs_scripts import load
from _small import GRID

from ldae import LDAEEncoder
from ldae.demo import UNTRAINED, run_demo
from ldae.exceptions import InputError
from ldae.report import Report

SECTIONS = ["Cohort", "Training", "Linear probes", "Model comparison", "Generative tools",
            "Cohort analysis", "Run"]
FIGURES = ["training", "roc", "reconstruction", "variations", "manipulation", "interpolation",
           "cohort_map"]


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.headings, self._in_heading = [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        self._in_heading = tag == "h2"

    def handle_data(self, data):
        if self._in_heading:
            self.headings.append(data)
            self._in_heading = False


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    tiny = LDAEEncoder(preset="tiny", image_shape=GRID, ae_epochs=1, diffusion_epochs=1,
                       representation_epochs=1, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_demo(folder, n_subjects=20, encoder=tiny, verbose=0)
    result["warnings"] = [str(warning.message) for warning in caught]
    return result


def test_the_demo_control_reuses_the_fit_without_a_checkpoint_warning(demo):
    # the control knowingly replaces the fit's stage-3 checkpoint: no alarm for the user
    assert not [text for text in demo["warnings"] if "belongs to another fit" in text]


def _parsed(report):
    page = _Page()
    page.feed(report.read_text(encoding="utf-8"))
    return page


def test_html_report_embeds_every_figure_as_a_non_empty_png(demo):
    page = _parsed(demo["report"])
    assert page.headings == SECTIONS
    assert len(page.images) == len(FIGURES)
    for image in page.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix), image["src"][:40]
        png = base64.b64decode(image["src"][len(prefix):], validate=True)
        pixels = imread(io.BytesIO(png), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels[..., :3].std() > 0.01, f"figure {image['alt']!r} is blank"


@pytest.fixture(scope="module")
def browser():
    module = load("browser_check")
    if module.find_chromium() is None:
        pytest.skip("no Chromium on this machine and it could not be installed "
                    "(.ci/run installs Debian's chromium package when missing)")
    return module


def test_the_report_renders_in_headless_chromium_with_every_image_and_no_errors(demo, browser,
                                                                               tmp_path):
    check = browser.check_page(demo["report"], screenshot=tmp_path / "page.png")
    assert [image["alt"] for image in check.images] == [
        image["alt"] for image in _parsed(demo["report"]).images]
    assert len(check.images) == len(FIGURES)
    assert check.broken_images == []
    assert check.errors == [] and check.console == []
    screenshot = imread(tmp_path / "page.png")
    assert screenshot.shape[:2] == (1600, 1280) and screenshot[..., :3].std() > 0.01


def test_the_browser_check_sees_a_broken_image_and_a_script_error(browser, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<html><head></head><body><img alt="cut" src="data:image/png;base64,'
                    'iVBORw0KGgo="><script>console.error("oops")</script></body></html>')
    check = browser.check_page(page)
    assert check.broken_images == ["cut"]
    assert any("iVBORw0KGgo" in error for error in check.errors)
    assert any("oops" in line for line in check.console)


def test_markdown_twin_links_the_figures_written_beside_it(demo):
    markdown = demo["markdown"].read_text()
    for name in FIGURES:
        assert f"](figures/{name}.png)" in markdown
        assert (demo["markdown"].parent / "figures" / f"{name}.png").stat().st_size > 1000
    for section in SECTIONS:
        assert f"\n## {section}\n" in markdown
    assert "LDAE" in markdown and "harmonised embedding" in markdown and "corrupted: noise" in markdown


def test_report_says_how_much_the_code_steers_on_held_out_subjects(demo):
    history = demo["encoder"].history_["representation"]
    ratio = history["val_loss_shuffled_codes"][-1] / history["val_loss"][-1]
    assert f"with other scans' codes is {ratio:.3f}× the loss" in demo["markdown"].read_text()


def test_demo_quality_control_puts_the_corrupted_copies_first(demo):
    markdown = demo["markdown"].read_text()
    header, _, *table = markdown.split("The 10 highest scores:")[1].split("\n\n")[1].splitlines()
    assert [row.split("|")[1].strip().startswith("corrupted") for row in table[:4]] == [True] * 4
    # the out-of-distribution flag of transform, scan by scan
    column = [cell.strip() for cell in header.split("|")].index("out_of_distribution")
    assert {row.split("|")[column].strip() for row in table} <= {"True", "False"}


def test_report_rejects_bad_figure_names_and_non_tables(tmp_path):
    report = Report("t")
    figure = Figure()
    figure.subplots().plot([0, 1])
    report.figure(figure, "ok")
    with pytest.raises(InputError, match="already has a figure"):
        report.figure(figure, "ok")
    with pytest.raises(InputError, match="letters, digits"):
        report.figure(figure, "../escape")
    with pytest.raises(InputError, match="DataFrame"):
        report.table(np.zeros((2, 2)))
    report.table(pd.DataFrame({"a": [1.23456]}))
    report.text("**uses** `code` & <tags>")
    html_path, markdown_path = report.write(tmp_path)
    page = html_path.read_text()
    assert "<strong>uses</strong> <code>code</code> &amp; &lt;tags&gt;" in page and "1.23" in page
    assert "**uses** `code` & <tags>" in markdown_path.read_text()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["figures", "ok.png", "report.html",
                                                         "report.md"]


def test_demo_probes_the_untrained_encoder_control_of_its_own_fit(demo):
    table = demo["probes"].table()
    assert list(table.index[:3]) == ["LDAE", UNTRAINED, "AE latent (mean-pooled)"]
    # the control reused the fit's stages 1 and 2 from the checkpoints written beside the report
    assert (demo["report"].parent / "checkpoints" / "autoencoder.pt").is_file()
    comparisons = demo["probes"].comparisons("LDAE")
    assert UNTRAINED in set(comparisons.model_b)


def test_report_opens_with_this_runs_verdict_from_its_own_numbers(demo):
    markdown = demo["markdown"].read_text()
    first_paragraph = markdown.split("\n## ")[0]
    scores = demo["probes"].diagnosis.scores
    auc = scores.groupby("model")["roc_auc"].mean()
    beat_pca = auc["LDAE"] > auc["PCA of voxels"]
    assert "**On this run**" in first_paragraph
    expected = (f"LDAE's AD-vs-CN ROC-AUC is {auc['LDAE']:.3f}: "
                f"{'better than' if beat_pca else 'not better than'} PCA of the voxels "
                f"({auc['PCA of voxels']:.3f})")
    assert expected in first_paragraph
    assert "the untrained control" in first_paragraph and "age MAE (years)" in first_paragraph


def test_report_states_signs_devices_and_labels_pooled_figures(demo):
    markdown = demo["markdown"].read_text()
    assert "a positive difference favours LDAE for roc_auc" in markdown
    comparison = markdown.split("## Model comparison")[1].split("\n## ")[0]
    header = next(line for line in comparison.splitlines() if line.startswith("| metric"))
    assert header.rstrip(" |").endswith("favours")
    for row in (line for line in comparison.splitlines() if line.startswith("| mae")):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        difference, favours = float(cells[3]), cells[-1]
        assert favours == (cells[1] if difference < 0 else cells[2])  # lower MAE is better
    assert "pooled roc_auc [95% CI]" in markdown and "Pooled out-of-fold ROC curves" in markdown
    device = demo["encoder"].training_device_
    assert device in ("cpu, fp32", "cpu, bf16") and f"| device | {device} |" in markdown
