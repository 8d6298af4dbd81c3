"""Wall time of `ldae demo` and `ldae demo --quick` against their targets (10 and 2 minutes).

Runs each demo as a user would, in a fresh process (``python -m ldae demo``, so the
import time counts), and reports the wall time next to its target and the seconds of
each step that the demo's report lists (cohort, fit per stage, embed, probes,
generative tools, cohort analysis). The targets are for a 2-core CPU; the machine's
core count and whether ``precision="auto"`` trains in bf16 on it are recorded.

    python benchmarks/bench_demo.py            # both demos
    python benchmarks/bench_demo.py --quick    # only `ldae demo --quick`
    python benchmarks/bench_demo.py --quick --name avx2   # another machine's figures

Writes docs/benchmarks/demo[_quick][_NAME].json and .md.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from ldae._files import write_atomically
from ldae.model_selection import markdown_table
from ldae.training.device import resolve_precision

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
TARGET_SECONDS = {"ldae demo --quick": 120, "ldae demo": 600}


def run(command):
    """Wall seconds of one demo command and the step seconds from its report."""
    with tempfile.TemporaryDirectory() as scratch:
        arguments = command.split()[2:]
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ldae", "demo", "--quiet", "--output", scratch,
                        *arguments], check=True)
        wall = time.perf_counter() - start
        report = (Path(scratch) / "report.md").read_text()
    line = re.search(r"^Seconds: (.*)$", report, flags=re.MULTILINE).group(1)
    steps = {name.strip(): float(value)
             for name, value in re.findall(r"([a-z][a-z ]*) (\d+(?:\.\d+)?)", line)}
    # the demo's own probe table: LDAE against its untrained control and the PCA of voxels
    probes = re.search(r"^## Linear probes\n.*?\n(\| features \|.*?)\n\n", report,
                       flags=re.MULTILINE | re.DOTALL)
    return {"command": command, "wall_seconds": wall, "target_seconds": TARGET_SECONDS[command],
            "met": wall < TARGET_SECONDS[command], "steps": steps,
            "probe_table": probes.group(1) if probes else None}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the quick demo")
    parser.add_argument("--name", default=None, help="suffix of the output files")
    args = parser.parse_args(argv)
    commands = ["ldae demo --quick"] + ([] if args.quick else ["ldae demo"])
    runs = [run(command) for command in commands]
    training = resolve_precision("auto", torch.device("cpu"), "training")
    result = {
        "command": "python benchmarks/bench_demo.py" + (" --quick" if args.quick else "")
                   + (f" --name {args.name}" if args.name else ""),
        "runs": runs,
        "machine": {"cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "training_precision": "bf16" if training is not None else "fp32",
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "python": platform.python_version(), "torch": torch.__version__},
    }
    rows = [{"command": f"`{run['command']}`", "wall (s)": f"{run['wall_seconds']:.0f}",
             "target (s)": run["target_seconds"], "met": run["met"],
             **{name: f"{value:.0f}" for name, value in run["steps"].items()}} for run in runs]
    machine = result["machine"]
    markdown = "\n".join([
        "# Demo wall time against its targets", "",
        f"Command: `{result['command']}`", "",
        f"{machine['cpu_cores']} CPU cores ({machine['cpu_capability']}), "
        f"{machine['torch_threads']} torch threads, training precision with "
        f"`precision=\"auto\"`: {machine['training_precision']}.", "",
        markdown_table(pd.DataFrame(rows)), "",
        "Wall time of a fresh `python -m ldae demo` process, imports included; the other "
        "columns are the seconds per step from the demo's report.",
        *[line for run in runs if run["probe_table"]
          for line in ("", f"Linear probes of `{run['command']}` (its report's table, "
                           "mean ± sd over subject-grouped folds):", "", run["probe_table"])],
    ])
    name = "demo_quick" if args.quick else "demo"
    name += f"_{args.name}" if args.name else ""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    write_atomically(OUTPUT / f"{name}.json",
                     lambda temporary: temporary.write_text(json.dumps(result, indent=2) + "\n"))
    write_atomically(OUTPUT / f"{name}.md",
                     lambda temporary: temporary.write_text(markdown + "\n"))
    print(markdown)
    return 0 if all(run["met"] for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
