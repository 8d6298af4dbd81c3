"""The documentation: the API reference builds offline without warnings and covers the package."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def builder():
    spec = importlib.util.spec_from_file_location("docs_build", DOCS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(builder, tmp_path_factory):
    output = tmp_path_factory.mktemp("api")
    return output, builder.build(output)


def test_build_has_no_warnings(site):
    _, warnings = site
    assert warnings == []


def test_every_public_name_is_in_the_reference(builder, site):
    output, _ = site
    names = builder.public_names(builder.package_modules())
    assert "ldae.encoder.LDAEEncoder.transform" in names
    assert "ldae.baselines.VoxelDAEEncoder" in names
    missing = []
    for fullname, doc in names.items():
        page = output / (doc.modulename.replace(".", "/") + ".html")
        if f'id="{doc.qualname}"' not in page.read_text():
            missing.append(fullname)
    assert missing == []


def test_a_public_function_without_docstring_is_reported(builder, tmp_path, monkeypatch):
    (tmp_path / "undocumented_example.py").write_text(
        "def documented():\n    '''Does a thing.'''\n\n\ndef bare():\n    pass\n\n\n"
        "def _private():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    names = builder.public_names(["undocumented_example"])
    assert set(names) == {"undocumented_example.documented", "undocumented_example.bare"}
    assert [name for name, doc in names.items() if not doc.docstring.strip()] == \
        ["undocumented_example.bare"]
    sys.modules.pop("undocumented_example", None)


def test_guide_pages_exist_and_their_links_resolve():
    index = (DOCS / "index.md").read_text()
    for page in ("getting-started.md", "your-own-cohort.md", "user-guide.md", "benchmarks.md",
                 "limits.md"):
        assert (DOCS / page).is_file() and page in index
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_the_user_guide_warns_that_loading_a_pickle_runs_code():
    guide = (Path(__file__).resolve().parent.parent / "docs" / "user-guide.md").read_text()
    assert "loading a pickle or joblib file runs whatever code it contains" in guide
    assert "LDAEEncoder.load(path)` are the safe" in guide
