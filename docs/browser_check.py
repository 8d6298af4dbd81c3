"""Open an HTML report in headless Chromium: did every image load, did the page log anything?

    python docs/browser_check.py ldae-demo/report.html --screenshot docs/_static/demo-report.png

Chromium renders a copy of the page with one observer script added at the top of its head:
after the page's ``load`` event it records each image's ``naturalWidth`` (0 for an image
that did not decode) and every error event (script errors and resources that failed).
Console messages come from Chromium's own log. Used by ``tests/test_demo.py``; the
screenshot in the docs is made by the command above from ``ldae demo --quick``'s report.
"""

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
RESULT_ID = "ldae-browser-check"
_OBSERVER = f"""<script>
window.__errors = [];
window.addEventListener("error", event => window.__errors.push(
  String(event.message || (event.target && (event.target.src || event.target.href)) || event.type)), true);
window.addEventListener("load", () => {{
  const images = Array.from(document.images, image => ({{alt: image.alt, width: image.naturalWidth}}));
  const result = document.createElement("pre");
  result.id = "{RESULT_ID}";
  result.textContent = JSON.stringify({{images: images, errors: window.__errors}});
  document.body.appendChild(result);
}});
</script>"""
_CONSOLE = re.compile(r":CONSOLE[:(]\d+\)?\]\s*(.*)")


@dataclass
class BrowserCheck:
    """What Chromium saw: ``images`` (alt text, natural width), error events, console lines."""

    images: list
    errors: list
    console: list

    @property
    def broken_images(self):
        return [image["alt"] for image in self.images if image["width"] <= 0]


def find_chromium():
    """Path of a Chromium executable on PATH, or None."""
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def check_page(page, *, screenshot=None, chromium=None, timeout=120):
    """Render ``page`` headless and return a :class:`BrowserCheck`; optionally save a screenshot."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError(f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)})")
    source = Path(page).read_text(encoding="utf-8")
    if "<head>" not in source:
        raise ValueError(f"{page}: no <head> element to add the observer script to")
    with tempfile.TemporaryDirectory() as scratch:
        observed = Path(scratch) / "observed.html"
        observed.write_text(source.replace("<head>", "<head>" + _OBSERVER, 1), encoding="utf-8")
        run = _chromium(chromium, scratch, "--dump-dom", observed.as_uri(), timeout=timeout)
        if screenshot is not None:
            _chromium(chromium, scratch, f"--screenshot={Path(screenshot).resolve()}",
                      "--window-size=1280,1600", Path(page).resolve().as_uri(), timeout=timeout)
    found = re.search(rf'<pre id="{RESULT_ID}">(.*?)</pre>', run.stdout, re.S)
    if found is None:
        raise RuntimeError(f"{page}: Chromium never reached the page's load event "
                           f"(exit status {run.returncode}): {run.stderr[-2000:]}")
    result = json.loads(html.unescape(found.group(1)))
    console = [match.group(1) for match in map(_CONSOLE.search, run.stderr.splitlines()) if match]
    return BrowserCheck(result["images"], result["errors"], console)


def _chromium(chromium, profile, *arguments, timeout):
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               f"--user-data-dir={profile}/profile", "--enable-logging=stderr", "--v=0",
               "--virtual-time-budget=10000", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page")
    parser.add_argument("--screenshot", default=None)
    args = parser.parse_args(argv)
    check = check_page(args.page, screenshot=args.screenshot)
    print(f"{len(check.images)} images, broken: {check.broken_images or 'none'}; "
          f"error events: {check.errors or 'none'}; console: {check.console or 'nothing'}")
    return 1 if check.broken_images or check.errors or check.console else 0


if __name__ == "__main__":
    sys.exit(main())
