"""Speed of the synthetic cohort generator.

Generates 200 scans at 64x80x64 (50 subjects x 4 visits, no drop-out, so the count is
exact) and times:

- the first call in a fresh process on all cores (cold: it also loads the MNI
  template, resamples it to the grid and integrates the atrophy flows; the target is
  < 30 s on 2 cores);
- later calls (warm: median of the runs) on one thread and on all cores (n_jobs);
- a warm call on all cores that also writes the BIDS-like tree of .nii.gz files.

Prints a table and writes docs/benchmarks/bench_synthetic.json.

    python benchmarks/bench_synthetic.py [--quick]
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SHAPE = (64, 80, 64)
VISITS = (0, 6, 12, 24)
TARGET_SECONDS = 30.0
OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "bench_synthetic.json"


def timed(function, *args, **kwargs):
    """(result, wall seconds, CPU seconds of this process) of ``function(*args, **kwargs)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 subjects (80 scans), 1 warm run")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="JSON file to write")
    args = parser.parse_args(argv)
    n_subjects = 20 if args.quick else 50
    warm_runs = 1 if args.quick else 3
    n_scans = n_subjects * len(VISITS)

    _, import_seconds, _ = timed(__import__, "ldae.datasets")
    from ldae.datasets import make_synthetic_cohort

    def generate(seed, **kwargs):
        return make_synthetic_cohort(n_subjects, shape=SHAPE, visit_months=VISITS, dropout=0.0,
                                     random_state=seed, **kwargs)

    cohort, cold_wall, cold_cpu = timed(generate, 0, n_jobs=-1)
    assert len(cohort.frame) == n_scans
    rows = [{"case": "generate, first call (cold), all cores", "wall_s": cold_wall,
             "cpu_s": cold_cpu}]
    for n_jobs, cores in ((1, "1 thread"), (-1, "all cores")):
        runs = [timed(generate, seed, n_jobs=n_jobs)[1:] for seed in range(1, warm_runs + 1)]
        wall, cpu = np.median(runs, axis=0)
        rows.append({"case": f"generate, warm, {cores} (median of {warm_runs})",
                     "wall_s": wall, "cpu_s": cpu})
    with tempfile.TemporaryDirectory() as folder:
        _, wall, cpu = timed(generate, 1, output_dir=folder, n_jobs=-1)
        written_mb = sum(p.stat().st_size for p in Path(folder).rglob("*.nii.gz")) / 1e6
    rows.append({"case": "generate + write .nii.gz, warm, all cores", "wall_s": wall,
                 "cpu_s": cpu})
    for row in rows:
        row["scans_per_s"] = n_scans / row["wall_s"]
        row.update({key: round(row[key], 3) for key in ("wall_s", "cpu_s", "scans_per_s")})

    print(f"{n_scans} scans ({n_subjects} subjects x {len(VISITS)} visits) at "
          f"{'x'.join(map(str, SHAPE))}; torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"import ldae.datasets: {import_seconds:.2f} s")
    print(f"{'case':50s} {'wall s':>8s} {'CPU s':>8s} {'scans/s':>8s}")
    for row in rows:
        print(f"{row['case']:50s} {row['wall_s']:8.2f} {row['cpu_s']:8.2f} "
              f"{row['scans_per_s']:8.1f}")
    print(f"written: {written_mb:.0f} MB of .nii.gz")
    meets = None if args.quick else bool(cold_wall < TARGET_SECONDS)
    if meets is not None:
        print(f"cold generation of 200 scans: {cold_wall:.1f} s, "
              f"{'meets' if meets else 'MISSES'} the {TARGET_SECONDS:.0f} s target")

    report = {
        "benchmark": "bench_synthetic",
        "cohort": f"{n_subjects} subjects x {len(VISITS)} visits = {n_scans} scans, "
                  f"shape {list(SHAPE)}, default generation parameters otherwise",
        "quick": args.quick,
        "import_s": round(import_seconds, 3),
        "rows": rows,
        "written_mb": round(written_mb, 1),
        "target_s_for_200_scans_cold": TARGET_SECONDS,  # judged in the full run only
        "meets_target": meets,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.output.with_name(f".{args.output.name}.tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temporary, args.output)
    print(f"wrote {args.output}")
    return 1 if meets is False else 0


if __name__ == "__main__":
    sys.exit(main())
