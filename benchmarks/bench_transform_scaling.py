"""``transform`` throughput and peak memory against the number of NIfTI files on disk.

Writes N gzipped NIfTI scans (copies of a few synthetic scans, so that writing them
is cheap; every file is still read and decoded), fits an LDAEEncoder for one epoch
per stage (throughput does not depend on how well it is trained), then, each in
its own subprocess: ``transform(paths)`` of the first N files, and plain nibabel
decoding of the same files (``np.asarray(nib.load(path).dataobj)``), the limit that
reading sets. Memory must stay flat in N: the peak resident set size during the
call (sampled, see benchmarks/_memory.py) above the process's size before it should
not grow with N.

    python benchmarks/bench_transform_scaling.py --quick   # 20 / 100 / 300 files
    python benchmarks/bench_transform_scaling.py           # 100 / 1,000 / 5,000 files

Then the command line over the same files, each run its own process reporting its
peak RSS (VmHWM): ``ldae embed`` on the smallest and the largest
number of files, and ``ldae fit`` (1 epoch per stage) on few and on many scans
(quick: 20 / 100, full: 100 / 1,000), since training streams scans from disk too.

Writes docs/benchmarks/transform_scaling[_quick].json and .md.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import joblib
import nibabel as nib
import numpy as np
import torch
from _memory import PeakRSS

from ldae._files import write_atomically

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
SHAPE = (32, 40, 32)
QUICK = dict(counts=[20, 100, 300], fit_counts=[20, 100])
FULL = dict(counts=[100, 1000, 5000], fit_counts=[100, 1000])


def worker(spec):
    """Time one pass over the first ``count`` files: the encoder's or nibabel's."""
    paths = Path(spec["list"]).read_text().split()[:spec["count"]]
    if spec["kind"] == "transform":
        model = joblib.load(spec["model"])
        model.transform(paths[:2])  # warm-up
        call = model.transform
    else:
        def call(files):
            return [np.asarray(nib.load(path).dataobj) for path in files]
    with PeakRSS() as memory:
        start = time.perf_counter()
        call(paths)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "scans_per_s": len(paths) / seconds,
            "rss_before_mb": memory.before_mb, "peak_rss_mb": memory.peak_mb}


def _in_subprocess(spec):
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# The kernel's ru_maxrss of a child (os.wait4) starts from the parent's peak at fork
# time, which here holds the scans and a model: the child reports its own high-water
# mark (VmHWM of its memory map) instead.
_REPORTING_LDAE = """
import atexit, sys
def report():
    with open("/proc/self/status") as status:
        peak = [line.split()[1] for line in status if line.startswith("VmHWM")][0]
    print("VmHWM_kB", peak, file=sys.stderr)
atexit.register(report)
from ldae.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run_command(arguments):
    """Run ``ldae <arguments>`` in a new process: its wall seconds and peak RSS in MB."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _REPORTING_LDAE, *arguments],
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"ldae {' '.join(arguments)} failed:\n{done.stderr[-3000:]}")
    peak_kb = int(done.stderr.strip().splitlines()[-1].split()[1])
    return {"seconds": seconds, "peak_rss_mb": peak_kb / 1024}


def _manifest(folder, paths, count):
    path = Path(folder) / f"manifest_{count}.csv"
    path.write_text("subject,session,path\n" + "".join(
        f"sub-{i:05d},ses-M00,{scan}\n" for i, scan in enumerate(paths[:count])))
    return str(path)


def _command_line(scratch, paths, model, counts, fit_counts):
    model_folder = Path(scratch) / "cli-model"
    model_folder.mkdir()
    joblib.load(model).save(model_folder / "model.pt")
    rows = {"embed": [], "fit": []}
    for count in (counts[0], counts[-1]):
        run = _run_command(["embed", "--model", str(model_folder), "--quiet",
                            "--manifest", _manifest(scratch, paths, count),
                            "--out", str(Path(scratch) / f"embeddings_{count}.csv")])
        rows["embed"].append({"count": count, "scans_per_s": count / run["seconds"], **run})
        print(f"ldae embed {count} files: {count / run['seconds']:.1f} scans/s (whole command), "
              f"peak RSS {run['peak_rss_mb']:.0f} MB")
    for count in fit_counts:
        run = _run_command(["fit", "--preset", "small", "--image-shape", *map(str, SHAPE),
                            "--ae-epochs", "1", "--diffusion-epochs", "1",
                            "--representation-epochs", "1", "--quiet",
                            "--manifest", _manifest(scratch, paths, count),
                            "--out", str(Path(scratch) / f"fit_{count}")])
        rows["fit"].append({"count": count, **run})
        print(f"ldae fit {count} scans: {run['seconds']:.0f} s, peak RSS {run['peak_rss_mb']:.0f} MB")
    return rows


def _write_files(folder, count):
    from ldae.datasets import make_synthetic_cohort

    cohort = make_synthetic_cohort(4, shape=SHAPE, random_state=0)
    paths = []
    for i in range(count):
        path = Path(folder) / f"scan_{i:05d}.nii.gz"
        nib.save(nib.Nifti1Image(cohort.images[i % len(cohort.images)], cohort.affine), path)
        paths.append(str(path))
    return cohort.images, paths


def _fit(images, folder):
    from ldae import LDAEEncoder

    model = LDAEEncoder(preset="small", image_shape=SHAPE, ae_epochs=1, diffusion_epochs=1,
                        representation_epochs=1, random_state=0).fit(images)
    path = str(Path(folder) / "model.joblib")
    joblib.dump(model, path)
    return path


def _markdown(result):
    import pandas as pd

    from ldae.model_selection import markdown_table

    rows = []
    for row in result["rows"]:
        transform, decode = row["transform"], row["nibabel"]
        rows.append({
            "files": row["count"],
            "transform scans/s": f"{transform['scans_per_s']:.1f}",
            "nibabel decode scans/s": f"{decode['scans_per_s']:.1f}",
            "transform / decode": f"{transform['scans_per_s'] / decode['scans_per_s']:.2f}",
            "transform peak RSS MB (growth)": f"{transform['peak_rss_mb']:.0f} "
                                              f"(+{transform['peak_rss_mb'] - transform['rss_before_mb']:.0f})",
            "nibabel peak RSS MB (growth)": f"{decode['peak_rss_mb']:.0f} "
                                            f"(+{decode['peak_rss_mb'] - decode['rss_before_mb']:.0f})",
        })
    return "\n".join([
        f"# `transform` against the number of files ({result['mode']})", "",
        f"Command: `{result['command']}`", "",
        f"{'×'.join(map(str, SHAPE))} gzipped NIfTI files, LDAEEncoder `small` architecture "
        f"(fitted 1 epoch per stage: throughput only), {result['machine']['threads']} torch threads, "
        f"load average at start {result['machine']['load_average']}. Growth: peak RSS above the "
        "process's size before the call (model loaded, warmed up).", "",
        markdown_table(pd.DataFrame(rows)), "",
        f"Peak-RSS growth from {result['rows'][0]['count']} to {result['rows'][-1]['count']} files: "
        f"{result['memory_growth_mb']:+.0f} MB; memory flat: {result['memory_flat']}.", "",
        "The command line, one process per run (peak RSS: the process's VmHWM; seconds "
        "include starting Python and loading the model):", "",
        markdown_table(pd.DataFrame(
            [{"command": "ldae embed", "scans": row["count"], "seconds": f"{row['seconds']:.1f}",
              "scans/s": f"{row['scans_per_s']:.1f}", "peak RSS MB": f"{row['peak_rss_mb']:.0f}"}
             for row in result["command_line"]["embed"]]
            + [{"command": "ldae fit (1 epoch per stage)", "scans": row["count"],
                "seconds": f"{row['seconds']:.1f}", "scans/s": "",
                "peak RSS MB": f"{row['peak_rss_mb']:.0f}"}
               for row in result["command_line"]["fit"]])),
    ])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 / 100 / 300 files")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    counts = (QUICK if args.quick else FULL)["counts"]
    result = {
        "command": "python benchmarks/bench_transform_scaling.py" + (" --quick" if args.quick else ""),
        "mode": "quick" if args.quick else "full",
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "load_average": [round(x, 1) for x in os.getloadavg()]},
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        images, paths = _write_files(scratch, max(counts))
        listing = Path(scratch) / "paths.txt"
        listing.write_text("\n".join(paths))
        model = _fit(images, scratch)
        for count in counts:
            row = {"count": count}
            for kind in ("nibabel", "transform"):
                row[kind] = _in_subprocess({"kind": kind, "count": count, "list": str(listing),
                                            "model": model})
            print(f"{count} files: transform {row['transform']['scans_per_s']:.1f} scans/s, "
                  f"nibabel {row['nibabel']['scans_per_s']:.1f} scans/s, transform peak RSS "
                  f"{row['transform']['peak_rss_mb']:.0f} MB")
            result["rows"].append(row)
        settings = QUICK if args.quick else FULL
        result["command_line"] = _command_line(scratch, paths, model, counts, settings["fit_counts"])
    growth = [row["transform"]["peak_rss_mb"] - row["transform"]["rss_before_mb"]
              for row in result["rows"]]
    result["memory_growth_mb"] = growth[-1] - growth[0]
    # flat: the largest run's peak is within 10% of the smallest run's
    result["memory_flat"] = bool(result["memory_growth_mb"] < 0.1 * result["rows"][0]["transform"]["peak_rss_mb"])
    OUTPUT.mkdir(parents=True, exist_ok=True)
    name = "transform_scaling_quick" if args.quick else "transform_scaling"
    write_text(OUTPUT / f"{name}.json", json.dumps(result, indent=2) + "\n")
    markdown = _markdown(result)
    write_text(OUTPUT / f"{name}.md", markdown + "\n")
    print(markdown)
    return 0



def write_text(path, text):
    write_atomically(path, lambda temporary: temporary.write_text(text))


if __name__ == "__main__":
    sys.exit(main())
