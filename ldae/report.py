"""A study report rendered twice: self-contained HTML (figures embedded) and Markdown.

A :class:`Report` collects headings, paragraphs, tables and matplotlib figures in
order. :meth:`Report.write` renders them into a folder: ``report.html`` carries
every figure inline as a base64 PNG (one file to e-mail or archive), and
``report.md`` links the same PNGs, written next to it under ``figures/``.
"""

import base64
import html
import io
import re
from pathlib import Path

import pandas as pd

from ._files import write_atomically
from .exceptions import InputError
from .model_selection import markdown_table

_STYLE = """
body { font-family: sans-serif; max-width: 70em; margin: 2em auto; line-height: 1.4; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9em; }
"""


class Report:
    """An ordered document of headings, paragraphs, tables and figures.

    Parameters
    ----------
    title : str
        Title of the document.
    """

    def __init__(self, title):
        self.title = title
        self._blocks = []
        self._figure_names = set()

    def heading(self, text):
        """Start a section titled ``text``."""
        self._blocks.append(("heading", str(text)))

    def text(self, text):
        """Add a paragraph (Markdown's inline ```code``` and ``**bold**`` are rendered as such)."""
        self._blocks.append(("text", str(text)))

    def table(self, frame, digits=3):
        """Add a DataFrame as a table, numbers rounded to ``digits`` significant digits."""
        if not isinstance(frame, pd.DataFrame):
            raise InputError(f"Report.table expects a pandas DataFrame, got {type(frame).__name__}")
        self._blocks.append(("table", (frame, digits)))

    def figure(self, figure, name, caption=""):
        """Add a matplotlib figure, saved as ``figures/<name>.png``.

        Parameters
        ----------
        figure : matplotlib.figure.Figure
        name : str
            File stem: letters, digits, ``-`` and ``_``; unique within the report.
        caption : str, default=""
        """
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)):
            raise InputError(f"figure name {name!r} must use only letters, digits, '-' and '_'")
        if name in self._figure_names:
            raise InputError(f"the report already has a figure named {name!r}")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        self._figure_names.add(name)
        self._blocks.append(("figure", (name, buffer.getvalue(), str(caption))))

    def write(self, folder):
        """Write ``report.html``, ``report.md`` and ``figures/*.png`` into ``folder``.

        Every file is written atomically.

        Parameters
        ----------
        folder : str or Path

        Returns
        -------
        tuple of Path
            The HTML report and its Markdown twin.
        """
        folder = Path(folder)
        for kind, content in self._blocks:
            if kind == "figure":
                name, png, _ = content
                write_atomically(folder / "figures" / f"{name}.png",
                                 lambda temporary, png=png: temporary.write_bytes(png))
        html_path, markdown_path = folder / "report.html", folder / "report.md"
        write_atomically(html_path, lambda temporary: temporary.write_text(self.to_html(),
                                                                            encoding="utf-8"))
        write_atomically(markdown_path, lambda temporary: temporary.write_text(self.to_markdown(),
                                                                                encoding="utf-8"))
        return html_path, markdown_path

    def to_markdown(self):
        """The report as Markdown; figures link to ``figures/<name>.png``."""
        lines = [f"# {self.title}", ""]
        for kind, content in self._blocks:
            if kind == "heading":
                lines += [f"## {content}", ""]
            elif kind == "text":
                lines += [content, ""]
            elif kind == "table":
                frame, digits = content
                lines += [markdown_table(frame, digits=digits), ""]
            else:
                name, _, caption = content
                lines += [f"![{caption or name}](figures/{name}.png)", ""]
                if caption:
                    lines += [f"*{caption}*", ""]
        return "\n".join(lines)

    def to_html(self):
        """The report as one HTML page with every figure embedded as a base64 PNG."""
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, content in self._blocks:
            if kind == "heading":
                body.append(f"<h2>{html.escape(content)}</h2>")
            elif kind == "text":
                body.append(f"<p>{_inline_markup(html.escape(content))}</p>")
            elif kind == "table":
                frame, digits = content
                body.append(frame.to_html(index=False, border=0, na_rep="",
                                          float_format=lambda value: f"{value:.{digits}g}"))
            else:
                name, png, caption = content
                data = base64.b64encode(png).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(caption or name)}" '
                            f'src="data:image/png;base64,{data}">'
                            f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head>"
                "<body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline_markup(escaped):
    coded = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", coded)
