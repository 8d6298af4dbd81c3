"""The README's Quickstart as a new user runs it: its output and its wall time.

Extracts the Python block under "## Quickstart" in README.md, runs it in a fresh
Python process (imports included) and records what it prints and how long it
took, with the machine's load average, so that the README can state both.

    python benchmarks/bench_quickstart.py

Writes docs/benchmarks/quickstart.json and .md.
"""

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from ldae._files import write_atomically

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "benchmarks"


def quickstart_code():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def main():
    code = quickstart_code()
    load = os.getloadavg()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    seconds = time.perf_counter() - start
    result = {"command": "python benchmarks/bench_quickstart.py", "seconds": seconds,
              "output": done.stdout.strip(), "load_average_at_start": load,
              "cpu": platform.processor(), "cpus": os.cpu_count()}
    write_atomically(OUTPUT / "quickstart.json",
                     lambda temporary: temporary.write_text(json.dumps(result, indent=2) + "\n"))
    markdown = "\n".join([
        "# The README's Quickstart", "",
        f"Command: `{result['command']}`; a fresh Python process, imports included, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} at the start.", "",
        f"Wall time: {seconds:.0f} s. It printed:", "", "```", result["output"], "```", ""])
    write_atomically(OUTPUT / "quickstart.md", lambda temporary: temporary.write_text(markdown))
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
