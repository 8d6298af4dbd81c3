"""Build the documentation site offline with Sphinx, failing on any warning.

    python docs/build.py [--output site] [--no-gallery]

The site holds the user guide (docs/*.md, docs/guide/*.md, read by MyST), the API
reference generated from the numpydoc docstrings (every public module, listed in
docs/api.rst), the benchmark pages and the gallery: every script examples/plot_*.py runs
during the build (sphinx-gallery) and its output and figures are rendered into its page.
A warning, a public object without a docstring (numpydoc's GL08 check) or a failing
example fails the build (exit status 1). ``--no-gallery`` skips running the examples.
"""

import argparse
import importlib
import pkgutil
import shutil
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
PACKAGE = "ldae"


def public_modules():
    """Names of the package and of every public submodule (no ``_`` in the dotted name).

    Returns
    -------
    list of str
    """
    package = importlib.import_module(PACKAGE)
    return [PACKAGE] + [info.name for info in pkgutil.walk_packages(package.__path__,
                                                                   prefix=f"{PACKAGE}.")
                        if not any(part.startswith("_") for part in info.name.split("."))]


def build(output, *, gallery=True, source=DOCS):
    """Build the HTML site of ``source`` into ``output``, from scratch.

    The API stubs, the gallery pages and the examples' shared checkpoints of an earlier
    build are deleted first, so every example runs again (sphinx-gallery would otherwise
    keep the pages of unchanged examples, figures or not) and trains their model anew.

    Parameters
    ----------
    output : str or Path
        Folder receiving the site (``index.html`` at its root).
    gallery : bool, default=True
        Run the examples; False renders the gallery pages without running them.
    source : str or Path, default=the docs folder

    Returns
    -------
    int
        0 when the build succeeded without any warning, else non-zero.
    """
    from sphinx.cmd.build import build_main

    for generated in ("generated", "auto_examples"):  # never reuse a previous build's pages
        shutil.rmtree(Path(source) / generated, ignore_errors=True)
    # nor the model the examples share through this checkpoint folder (see examples/)
    shutil.rmtree(Path(tempfile.gettempdir()) / "ldae-examples", ignore_errors=True)
    arguments = ["-W", "--keep-going", "-q", "-b", "html", "-d", str(Path(output) / ".doctrees")]
    if not gallery:
        arguments += ["-D", "sphinx_gallery_conf.plot_gallery=0"]
    return build_main([*arguments, str(source), str(output)])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="site", help="folder of the HTML site (default: site)")
    parser.add_argument("--no-gallery", action="store_true", help="do not run the examples")
    args = parser.parse_args(argv)
    status = build(args.output, gallery=not args.no_gallery)
    if status == 0:
        print(f"site: {Path(args.output).resolve() / 'index.html'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
