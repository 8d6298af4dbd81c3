"""Sphinx configuration of the ldae documentation (built offline by ``python docs/build.py``)."""

import re
from pathlib import Path

import matplotlib

import ldae

matplotlib.use("agg")

project = "ldae"
author = "ldae developers"
copyright = "ldae developers"
release = version = ldae.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "myst_parser",
    "matplotlib.sphinxext.plot_directive",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "generated/README.md"]
# Guide pages link to the README and to benchmark scripts outside docs/: plain links.
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]
suppress_warnings = ["myst.xref_missing", "config.cache"]

autosummary_generate = True
autosummary_ignore_module_all = False
templates_path = ["_templates"]
autodoc_default_options = {"inherited-members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# GL08: a public object without a docstring is a warning, and warnings fail the build
numpydoc_validation_checks = {"GL08"}
numpydoc_validation_exclude = {r"\.__init__$", r"\.set_\w+_request$", r"\.__sklearn_\w+__$"}

plot_include_source = False
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 100)]


def _figures(block, block_vars, gallery_conf):
    """Scrape the matplotlib figures an example built, with pyplot or without it.

    ldae.plotting builds its figures without pyplot (no window opens), so the
    default scraper, which asks pyplot, would miss them: this one also looks for
    Figure objects among the example's variables.
    """
    from matplotlib import pyplot
    from matplotlib.figure import Figure
    from sphinx_gallery.scrapers import figure_rst

    seen = block_vars.setdefault("ldae_seen_figures", set())
    figures = [pyplot.figure(number) for number in pyplot.get_fignums()]
    figures += [value for value in block_vars["example_globals"].values()
                if isinstance(value, Figure)]
    paths = []
    for figure in figures:
        if id(figure) in seen:
            continue
        seen.add(id(figure))
        path = next(block_vars["image_path_iterator"])
        figure.savefig(path, dpi=90, bbox_inches="tight")
        paths.append(path)
    pyplot.close("all")
    return figure_rst(paths, gallery_conf["src_dir"])


sphinx_gallery_conf = {
    "examples_dirs": str(Path(__file__).parent.parent / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "image_scrapers": (_figures,),
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    "remove_config_comments": True,
    "min_reported_time": 0,
}

html_theme = "alabaster"
html_title = f"ldae {version}"
html_static_path = []
html_theme_options = {"description": "Latent Diffusion Autoencoders for 3D brain MRI",
                      "fixed_sidebar": True, "page_width": "1100px"}


def _skip_routing_setters(app, what, name, obj, skip, options):
    """scikit-learn generates set_<method>_request on every estimator; its docs hold them."""
    return True if re.fullmatch(r"set_\w+_request", name) else None


def setup(app):
    app.connect("autodoc-skip-member", _skip_routing_setters)
