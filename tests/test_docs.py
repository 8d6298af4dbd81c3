"""The documentation site: Sphinx builds it offline without a warning, runs the gallery,
and covers every public module and name."""

import importlib
import re
from pathlib import Path

import pytest
from _docs_scripts import DOCS, load

ROOT = DOCS.parent
MIN_EXAMPLES = 8


@pytest.fixture(scope="module")
def builder():
    return load("build")


@pytest.fixture(scope="module")
def site(builder, tmp_path_factory):
    """The whole site, gallery included (its examples run: the slow part of this file)."""
    output = tmp_path_factory.mktemp("site")
    assert builder.build(output) == 0, "the documentation build warned or an example failed"
    return output


@pytest.mark.slow
def test_every_example_runs_and_shows_its_figures(site):
    examples = sorted((ROOT / "examples").glob("plot_*.py"))
    assert len(examples) >= MIN_EXAMPLES
    for example in examples:
        page = (site / "auto_examples" / f"{example.stem}.html").read_text()
        images = re.findall(r'src="\.\./(_images/sphx_glr_[^"]+\.png)"', page)
        assert images, f"{example.name} rendered no figure"
        for image in images:
            assert (site / image).stat().st_size > 1000
        assert "Traceback" not in page


@pytest.mark.slow
def test_every_public_module_and_name_has_a_reference_page(builder, site):
    listed = set(re.findall(r"^   (ldae[\w.]*)$", (DOCS / "api.rst").read_text(), re.MULTILINE))
    modules = builder.public_modules()
    assert "ldae.site_effects" in modules and set(modules) == listed
    missing = []
    for name in modules:
        module = importlib.import_module(name)
        public = getattr(module, "__all__", None) or [
            key for key, value in vars(module).items() if not key.startswith("_")
            and callable(value) and getattr(value, "__module__", None) == name]
        for member in public:
            value = getattr(module, member)
            if not callable(value):
                continue
            page = site / "generated" / f"{name}.{member}.html"
            if not page.is_file() or f'id="{name}.{member}"' not in page.read_text():
                missing.append(f"{name}.{member}")
    assert missing == []
    encoder_page = (site / "generated" / "ldae.encoder.LDAEEncoder.html").read_text()
    assert 'id="ldae.encoder.LDAEEncoder.transform"' in encoder_page


def _public_estimators():
    from sklearn.base import BaseEstimator

    from ldae import LDAEEncoder
    from ldae.baselines import SupervisedEncoder, VoxelDAEEncoder
    from ldae.brain_age import BrainAgeRegressor
    from ldae.longitudinal import MixedEffectsRegressor
    from ldae.quality_control import QualityControl
    from ldae.retrieval import SimilarScans
    from ldae.site_effects import SiteHarmonizer

    estimators = [LDAEEncoder(), SupervisedEncoder(), VoxelDAEEncoder(), BrainAgeRegressor(),
                  MixedEffectsRegressor(), QualityControl(), SimilarScans(), SiteHarmonizer()]
    assert all(isinstance(estimator, BaseEstimator) for estimator in estimators)
    return estimators


@pytest.mark.slow
def test_every_estimator_repr_links_to_its_page_of_the_built_site(site, monkeypatch):
    monkeypatch.setenv("LDAE_DOCS_URL", site.as_uri())
    for estimator in _public_estimators():
        link = estimator._get_doc_link()
        assert link.startswith(site.as_uri()), type(estimator).__name__
        assert Path(link.removeprefix("file://")).is_file(), link
        assert f'href="{link}"' in estimator._repr_html_()


def test_without_a_docs_url_the_repr_has_no_dead_link(monkeypatch):
    monkeypatch.delenv("LDAE_DOCS_URL", raising=False)
    for estimator in _public_estimators():
        assert estimator._get_doc_link() == ""
    monkeypatch.setenv("LDAE_DOCS_URL", "https://docs.example.org/ldae/")
    assert _public_estimators()[0]._get_doc_link() == (
        "https://docs.example.org/ldae/generated/ldae.encoder.LDAEEncoder.html")


@pytest.mark.slow
def test_the_guide_pages_are_in_the_site(site):
    for page in ("getting-started", "concepts", "your-own-cohort", "user-guide", "guide/data",
                 "guide/studies", "guide/longitudinal", "guide/generative",
                 "guide/cohort-analysis", "guide/scale", "limits", "glossary", "benchmarks",
                 "benchmarks/model_quality"):
        assert (site / f"{page}.html").is_file(), page
    concepts = (site / "concepts.html").read_text()
    assert re.search(r'<img [^>]*src="[^"]*\.png"', concepts), "the three-stage figure is missing"


def test_an_undocumented_public_function_fails_the_build(builder, tmp_path, monkeypatch):
    (tmp_path / "undocumented_example.py").write_text(
        '"""A module."""\n\n\ndef documented():\n    """Does a thing."""\n\n\n'
        "def bare():\n    pass\n")
    source = tmp_path / "source"
    source.mkdir()
    (source / "conf.py").write_text(
        'extensions = ["sphinx.ext.autodoc", "numpydoc"]\n'
        'numpydoc_validation_checks = {"GL08"}\n')
    # what an autosummary page of the site holds for each public function
    (source / "index.rst").write_text("Index\n=====\n\n.. autofunction:: undocumented_example.{}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    index = (source / "index.rst").read_text()
    (source / "index.rst").write_text(index.format("bare"))
    assert builder.build(tmp_path / "out", gallery=False, source=source) != 0
    (source / "index.rst").write_text(index.format("documented"))
    assert builder.build(tmp_path / "out2", gallery=False, source=source) == 0


def test_guide_links_resolve():
    pages = [*DOCS.glob("*.md"), *DOCS.glob("guide/*.md")]
    assert len(pages) >= 12
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_the_guide_warns_that_loading_a_pickle_runs_code():
    guide = (DOCS / "guide" / "scale.md").read_text()
    assert "loading a pickle or joblib file runs whatever code it contains" in guide
    assert "LDAEEncoder.load(path)` are the safe" in guide
