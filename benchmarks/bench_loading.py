"""Loading + preprocessing speed against plain nibabel decoding.

Writes the MNI152 2009 T1 template that nilearn ships (1 mm, 197x233x189,
cast to float32) to a temporary .nii.gz, then times, interleaved so that the
machine's load affects every case alike (median of the runs):

- plain nibabel decoding, ``np.asarray(nib.load(path).dataobj)`` (the baseline);
- nibabel's float32 read (``get_fdata``), which stops before the gzip trailer, against
  ldae's ``read_volume``, which decompresses to the end of the stream so the CRC-32 and
  length are checked (target: at most 1.10x);
- ldae load + preprocess on the native 1 mm grid, crop/pad to 192x224x192
  (the target: at most 1.5x the baseline), also for the same scan stored
  left-right flipped (LAS);
- ldae load + preprocess with resampling to 2 mm, crop/pad to 96x112x96;
- ldae load + resampling into the model grids of the presets (MNI, anti-aliased):
  ``small`` (32x40x32 voxels of 5.5 mm) and ``paper`` (128x160x128 of 1.375 mm);
- a cache hit (the volume read back from the on-disk cache);
- building the dataset (opening and checking the header).

Prints a table and writes docs/benchmarks/bench_loading.json.

    python benchmarks/bench_loading.py [--quick]
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from nilearn.datasets import load_mni152_template

from ldae.imaging import Preprocessing, as_volume_dataset
from ldae.imaging.nifti import open_image, read_volume
from ldae.presets import PRESETS

TARGET_RATIO = 1.5
# Decoding a .nii.gz to the end of its stream (CRC-32 and length checked) against
# nibabel's read, which stops before the gzip trailer: at most 10 % dearer.
STREAM_CHECK_TARGET = 1.10
NIBABEL_READ = "nibabel get_fdata float32 (no CRC check)"
CHECKED_READ = "ldae read_volume (CRC-32 checked)"
OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "bench_loading.json"


def write_template(folder):
    """The 1 mm MNI template as float32 .nii.gz, in RAS and flipped to LAS."""
    template = load_mni152_template(resolution=1)
    data = np.asarray(template.dataobj, dtype=np.float32)
    ras = os.path.join(folder, "mni152_t1_1mm.nii.gz")
    nib.save(nib.Nifti1Image(data, template.affine), ras)
    flip_x = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip_x[0, 3] = data.shape[0] - 1
    las = os.path.join(folder, "mni152_t1_1mm_las.nii.gz")
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data[::-1]), template.affine @ flip_x), las)
    return ras, las, data.shape


def cases(ras, las, cache_dir):
    """Name -> callable, each loading one scan the way it will be timed."""
    native = Preprocessing(shape=(192, 224, 192))
    two_mm = Preprocessing(shape=(96, 112, 96), voxel_size=2.0)
    small_grid, paper_grid = (Preprocessing(shape=PRESETS[name].image_shape,
                                            affine=PRESETS[name].grid_affine)
                              for name in ("small", "paper"))
    native_ras = as_volume_dataset([ras], native)
    native_las = as_volume_dataset([las], native)
    resampled = as_volume_dataset([ras], two_mm)
    cached = as_volume_dataset([ras], native, cache_dir=cache_dir)
    cached[0]  # fills the cache
    return {
        "nibabel decode (baseline)": lambda: np.asarray(nib.load(ras).dataobj),
        NIBABEL_READ: lambda: nib.load(ras).get_fdata(dtype=np.float32),
        CHECKED_READ: lambda: read_volume(open_image(ras), ras),
        "ldae 1 mm, crop/pad 192x224x192": lambda: native_ras[0],
        "ldae 1 mm LAS file, crop/pad 192x224x192": lambda: native_las[0],
        "ldae resample 2 mm, crop/pad 96x112x96": lambda: resampled[0],
        "ldae into the small grid (5.5 mm, MNI)": lambda: as_volume_dataset([ras], small_grid)[0],
        "ldae into the paper grid (1.375 mm, MNI)": lambda: as_volume_dataset([ras], paper_grid)[0],
        "ldae cache hit, 192x224x192": lambda: cached[0],
        "ldae dataset build (header check)": lambda: as_volume_dataset([ras], native),
    }


def time_interleaved(functions, repeats):
    """Median wall time of each function over `repeats` interleaved rounds."""
    for function in functions.values():  # warm-up: imports, allocator, page cache
        function()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds instead of 21")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="JSON file to write")
    args = parser.parse_args(argv)
    repeats = 5 if args.quick else 21

    with tempfile.TemporaryDirectory() as folder:
        ras, las, shape = write_template(folder)
        medians = time_interleaved(cases(ras, las, os.path.join(folder, "cache")), repeats)

    baseline = medians["nibabel decode (baseline)"]
    rows = [
        {
            "case": name,
            "median_ms": round(1000 * seconds, 2),
            "ratio_to_nibabel": round(seconds / baseline, 3),
        }
        for name, seconds in medians.items()
    ]
    ratio = medians["ldae 1 mm, crop/pad 192x224x192"] / baseline
    print(f"MNI152 T1 1 mm {shape}, float32 .nii.gz; median of {repeats} interleaved rounds")
    print(f"{'case':44s} {'median ms':>10s} {'x nibabel':>10s}")
    for row in rows:
        print(f"{row['case']:44s} {row['median_ms']:10.1f} {row['ratio_to_nibabel']:10.2f}")
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    print(f"load + preprocess at 1 mm: {ratio:.2f}x nibabel, {verdict} the {TARGET_RATIO}x target")
    check_cost = medians[CHECKED_READ] / medians[NIBABEL_READ]
    check_verdict = "meets" if check_cost <= STREAM_CHECK_TARGET else "MISSES"
    print(f"whole-stream gzip check: {check_cost:.2f}x nibabel's read, {check_verdict} the "
          f"{STREAM_CHECK_TARGET}x target")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "bench_loading",
        "image": f"MNI152 2009 T1 template, 1 mm, shape {list(shape)}, float32 .nii.gz",
        "rounds": repeats,
        "quick": args.quick,
        "rows": rows,
        "target_ratio": TARGET_RATIO,
        "ratio_1mm": round(ratio, 3),
        "meets_target": ratio <= TARGET_RATIO,
        "stream_check_ratio": round(check_cost, 3),
        "stream_check_target": STREAM_CHECK_TARGET,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "nibabel": nib.__version__,
            "torch": torch.__version__,
        },
    }
    temporary = args.output.with_name(f".{args.output.name}.tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temporary, args.output)
    print(f"wrote {args.output}")
    return 0 if ratio <= TARGET_RATIO and check_cost <= STREAM_CHECK_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
