"""Build the API reference of ldae from its docstrings, offline, with pdoc.

    python docs/build.py [--output site/api]

Renders every public module of the package (numpy-style docstrings) to HTML and
reports, as warnings, what pdoc warns about and every public name without a
docstring. Exits 1 when there is any warning, so CI catches them. The guide pages
(docs/*.md) are Markdown read as they are; the API reference links them.
"""

import argparse
import importlib
import pkgutil
import sys
import warnings
from pathlib import Path

import pdoc
import pdoc.doc
import pdoc.render

PACKAGE = "ldae"
DOCUMENTED = (pdoc.doc.Class, pdoc.doc.Function)
# pdoc walks a subpackage without __all__ by itself and then meets its modules
# again in the explicit list: harmless, one page each
DUPLICATE = "but a module with this name has already been added"


def package_modules():
    """Names of the package and of all its public submodules, imported.

    Listed explicitly: pdoc would otherwise show only the submodules named in the
    package's ``__all__``. Names that a package exports lazily (a module
    ``__getattr__``) are resolved so that pdoc finds them.

    Returns
    -------
    list of str
    """
    package = importlib.import_module(PACKAGE)
    names = [PACKAGE]
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{PACKAGE}."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    for name in names:
        module = importlib.import_module(name)
        for exported in getattr(module, "__all__", ()):
            if exported not in vars(module):
                setattr(module, exported, getattr(module, exported))
    return names


def public_names(module_names):
    """Every public function and class of the given modules (and the public
    methods of those classes), with its documentation object.

    A module's public names are its ``__all__`` when it defines one, else the
    names it defines that do not start with an underscore. Constants are left
    out: Python gives them no docstring.

    Parameters
    ----------
    module_names : iterable of str

    Returns
    -------
    dict of str to pdoc.doc.Doc
        Fully qualified name -> documentation object.
    """
    names = {}
    for module_name in module_names:
        module = pdoc.doc.Module.from_name(module_name)
        for member in module.members.values():
            if member.name.startswith("_") or not isinstance(member, DOCUMENTED):
                continue
            if getattr(member, "taken_from", (module_name,))[0] != module_name and \
                    member.name not in getattr(module.obj, "__all__", ()):
                continue
            names[member.fullname] = member
            if isinstance(member, pdoc.doc.Class):
                for method in member.own_members:
                    if not method.name.startswith("_") and isinstance(method, DOCUMENTED):
                        names[method.fullname] = method
    return names


def build(output):
    """Render the API reference into ``output`` and return the list of warnings.

    Parameters
    ----------
    output : str or Path
        Folder receiving the HTML pages (``ldae.html``, ``ldae/*.html``, ``index.html``).

    Returns
    -------
    list of str
        pdoc's warnings and one line per public name without a docstring.
    """
    pdoc.render.configure(docformat="numpy", footer_text=f"{PACKAGE} API reference")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        modules = package_modules()
        pdoc.pdoc(*modules, output_directory=Path(output))
        names = public_names(modules)
    messages = [f"pdoc: {warning.message}" for warning in caught
                if "pdoc" in warning.filename and DUPLICATE not in str(warning.message)]
    messages += [f"missing docstring: {name}" for name, doc in sorted(names.items())
                 if not doc.docstring.strip()]
    return messages


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="site/api", help="folder of the HTML reference")
    args = parser.parse_args(argv)
    messages = build(args.output)
    for message in messages:
        print(f"warning: {message}", file=sys.stderr)
    print(f"API reference written to {args.output}/index.html ({len(messages)} warnings)")
    return 1 if messages else 0


if __name__ == "__main__":
    sys.exit(main())
