"""Links from an estimator's HTML representation to its page of the documentation site."""

import os

DOCS_URL_VARIABLE = "LDAE_DOCS_URL"


class DocumentationLinkMixin:
    """Link the estimator's notebook (HTML) repr to its API page, as scikit-learn's do.

    The site is built locally (``python docs/build.py --output site``) and served wherever
    a lab puts it, so the link's base is read from the ``LDAE_DOCS_URL`` environment
    variable (``https://docs.example.org/ldae``, or ``file:///.../site`` for a local
    build). Without it the repr has no link rather than a dead one.
    """

    _doc_link_module = "ldae"

    @property
    def _doc_link_template(self):
        base = os.environ.get(DOCS_URL_VARIABLE, "").rstrip("/")
        return f"{base}/generated/{{estimator_module}}.{{estimator_name}}.html" if base else ""
