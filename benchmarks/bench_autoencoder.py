"""Stage 1 alone, side by side: held-out SSIM and seconds of the autoencoder per batch size.

For each seed, a synthetic cohort in the demo's setting (60 subjects, 80 % of them trained
on, the rest held out, as in bench_stage3_curve.py); the `small` autoencoder is trained
with the demo's epochs at each stage-1 batch size (`ae_batch_size`), one after the other,
and scored by the SSIM of its reconstructions of the held-out scans. The seconds of a
batch size are given as a ratio to the first one's on the same seed.

    python benchmarks/bench_autoencoder.py --seeds 0 1 2 --batch-sizes 8 2
    python benchmarks/bench_autoencoder.py --quick      # 20 subjects, 1 epoch

Writes docs/benchmarks/autoencoder[_quick][_NAME].json and .md.
"""

import argparse
import math
import os
import platform
import sys

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import GroupShuffleSplit

from ldae import LDAEEncoder
from ldae.datasets import make_synthetic_cohort
from ldae.demo import DEMO_SHAPE, FULL
from ldae.generation import autoencoder_reconstruction
from ldae.imaging import as_volume_dataset
from ldae.metrics import ssim
from ldae.model_selection import markdown_table

from bench_model_quality import write_result

QUICK = dict(n_subjects=20, ae_epochs=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 2])
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else dict(n_subjects=FULL["n_subjects"],
                                             ae_epochs=FULL["overrides"]["ae_epochs"])
    result = {"command": " ".join(["python benchmarks/bench_autoencoder.py",
                                   *(sys.argv[1:] if argv is None else argv)]),
              "subjects": settings["n_subjects"], "ae_epochs": settings["ae_epochs"],
              "runs": [],
              "machine": {"processor": platform.processor() or platform.machine(),
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                          "threads": torch.get_num_threads(), "torch": torch.__version__}}
    for seed in args.seeds:  # the files are rewritten after each seed
        result["runs"].extend(run_seed(seed, settings["n_subjects"], settings["ae_epochs"],
                                       args.batch_sizes))
        write_result("autoencoder", args, result, render)


def run_seed(seed, n_subjects, epochs, batch_sizes):
    cohort = make_synthetic_cohort(n_subjects, shape=DEMO_SHAPE, random_state=seed)
    images, subjects = cohort.images, cohort.frame.subject
    train, held_out = next(GroupShuffleSplit(1, test_size=0.2, random_state=seed)
                           .split(images, groups=subjects))
    rows = []
    for batch_size in batch_sizes:
        load = os.getloadavg()[0]
        model = LDAEEncoder(preset="small", random_state=seed, validation_fraction=0,
                            ae_epochs=epochs, ae_batch_size=batch_size, diffusion_epochs=0,
                            representation_epochs=0).fit(images[train])
        volumes = as_volume_dataset(images, model.preprocessing_)
        reference = np.stack([volumes[int(i)] for i in held_out])
        scores = ssim(autoencoder_reconstruction(model, images[held_out]), reference)
        rows.append({"seed": seed, "ae_batch_size": batch_size,
                     "steps": epochs * math.ceil(len(train) / batch_size),
                     "ssim_held_out": float(np.mean(scores)), "ssim_worst_scan": float(np.min(scores)),
                     "seconds": model.fit_seconds_["autoencoder"],
                     "load_start": load, "load_end": os.getloadavg()[0]})
        print(rows[-1], flush=True)
    for row in rows:
        row["seconds_ratio"] = row["seconds"] / rows[0]["seconds"]
    return rows


def render(result):
    runs = pd.DataFrame(result["runs"])
    table = runs.assign(**{
        "held-out SSIM": runs.ssim_held_out.map("{:.4f}".format),
        "worst scan": runs.ssim_worst_scan.map("{:.4f}".format),
        "seconds": runs.seconds.map("{:.0f}".format),
        "seconds / first": runs.seconds_ratio.map("{:.2f}".format),
        "load": [f"{a:.2f} → {b:.2f}" for a, b in zip(runs.load_start, runs.load_end)],
    })[["seed", "ae_batch_size", "steps", "held-out SSIM", "worst scan", "seconds",
        "seconds / first", "load"]]
    summary = runs.groupby("ae_batch_size", sort=False).agg(
        mean_ssim=("ssim_held_out", "mean"), worst_seed_ssim=("ssim_held_out", "min"),
        mean_seconds_ratio=("seconds_ratio", "mean")).reset_index().round(4)
    machine = result["machine"]
    return "\n".join([
        f"# Stage 1 by batch size ({result['subjects']} subjects, {result['ae_epochs']} epochs)",
        "", f"Command: `{result['command']}`; {machine['threads']} torch threads, "
        f"{machine['cpu_capability']}.", "",
        "The `small` autoencoder alone, trained on 80 % of the subjects; SSIM of its "
        "reconstructions of the held-out subjects' scans.", "",
        markdown_table(table), "", "Over the seeds:", "", markdown_table(summary), ""])


if __name__ == "__main__":
    main()
