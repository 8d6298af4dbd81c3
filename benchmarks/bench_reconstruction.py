"""Reconstruction quality against DDIM steps, and missing-visit imputation against baselines.

Fits an LDAEEncoder on a synthetic cohort, then on held-out scans (subjects the
model never saw) reports SSIM and MSE to the input of:

- the LDAE reconstruction: deterministic encoding to x_T, then decoding with y;
- decoding from y only: the scan's embedding decoded from random x_T;
- the same random x_T decoded with another held-out scan's embedding (shuffled y),
  which must be further from the scan than its own y if y carries the scan;
- the autoencoder alone (stage 1; no diffusion, so independent of the steps),

at 10, 20, 50 and 100 DDIM steps (the paper's reconstruction table, on the
synthetic cohort). Then, on every (earlier, middle, later) visit triplet of the
held-out subjects, the middle scan predicted by LDAE interpolation
(``ldae.imputation.impute_missing_visits``) against copying the nearest visit and
voxel-wise linear interpolation, by gap to the nearest visit.

    python benchmarks/bench_reconstruction.py --quick   # tiny preset, 24 subjects
    python benchmarks/bench_reconstruction.py           # small preset (the demo's), 60 subjects

Writes docs/benchmarks/reconstruction[_quick].json and .md.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ldae import LDAEEncoder
from ldae._files import write_atomically
from ldae.datasets import make_synthetic_cohort
from ldae.generation import autoencoder_reconstruction
from ldae.imputation import impute_missing_visits
from ldae.metrics import mse, ssim
from ldae.model_selection import markdown_table

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
SHAPE = (32, 40, 32)
STEPS = (10, 20, 50, 100)
QUICK = dict(n_subjects=24, held_out=4, preset="tiny", overrides={})
FULL = dict(n_subjects=60, held_out=10, preset="small", overrides={})


def reconstruction_table(encoder, scans, seed):
    rows = []
    autoencoder = autoencoder_reconstruction(encoder, scans)
    embeddings = encoder.transform(scans)
    for steps in STEPS:
        start = time.perf_counter()
        outputs = {
            "LDAE (encoded x_T, y)": encoder.reconstruct(scans, steps=steps),
            "y only (random x_T)": encoder.generate(embeddings, random_state=seed, steps=steps)[:, 0],
            "shuffled y (random x_T)": encoder.generate(np.roll(embeddings, 1, axis=0),
                                                        random_state=seed, steps=steps)[:, 0],
            "autoencoder alone": autoencoder,
        }
        seconds = time.perf_counter() - start
        for method, output in outputs.items():
            similarity = ssim(output, scans)
            rows.append({"steps": steps, "method": method, "ssim": float(similarity.mean()),
                         "ssim_sd": float(similarity.std()), "mse": float(mse(output, scans).mean())})
        print(f"{steps} steps: " + ", ".join(f"{row['method']} SSIM {row['ssim']:.3f}"
                                             for row in rows[-len(outputs):]) + f" ({seconds:.0f} s)")
    return pd.DataFrame(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--random-state", type=int, default=0)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    seed = args.random_state

    cohort = make_synthetic_cohort(settings["n_subjects"], shape=SHAPE, random_state=seed)
    frame = cohort.frame
    subjects = frame.subject.unique()
    held_out = np.isin(frame.subject, subjects[-settings["held_out"]:])
    start = time.perf_counter()
    encoder = LDAEEncoder(preset=settings["preset"], random_state=seed, verbose=0,
                          **settings["overrides"]).fit(cohort.images[~held_out],
                                                       groups=frame.subject[~held_out])
    fit_seconds = time.perf_counter() - start
    print(f"fit on {int((~held_out).sum())} scans: {fit_seconds:.0f} s")

    test_frame = frame[held_out].reset_index(drop=True)
    test_images = cohort.images[held_out]
    baseline = (test_frame.months == 0).to_numpy()
    reconstruction = reconstruction_table(encoder, test_images[baseline], seed)
    imputation = impute_missing_visits(encoder, test_images, test_frame, steps=20)
    summary = imputation.summary[imputation.summary.reference == "scan"].drop(columns="reference")

    name = "reconstruction_quick" if args.quick else "reconstruction"
    command = "python benchmarks/bench_reconstruction.py" + (" --quick" if args.quick else "")
    result = {
        "command": command, "preset": settings["preset"], "fit_seconds": fit_seconds,
        "training_scans": int((~held_out).sum()), "held_out_subjects": settings["held_out"],
        "reconstruction": reconstruction.to_dict(orient="records"),
        "imputation_by_gap": summary.to_dict(orient="records"),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
    }
    ssim_by_steps = reconstruction.pivot(index="steps", columns="method", values="ssim")
    mse_by_steps = reconstruction.pivot(index="steps", columns="method", values="mse")
    markdown = "\n".join([
        f"# Reconstruction and missing-visit imputation ({'quick' if args.quick else 'full'})", "",
        f"Command: `{command}`. Preset `{settings['preset']}` fitted on "
        f"{result['training_scans']} scans in {fit_seconds:.0f} s; scored on the "
        f"{int(baseline.sum())} baseline scans of {settings['held_out']} held-out subjects.", "",
        "SSIM to the input (mean over scans) against DDIM steps:", "",
        markdown_table(ssim_by_steps.reset_index()), "",
        "MSE to the input:", "",
        markdown_table(mse_by_steps.reset_index()), "",
        f"Missing visits: {imputation.scores.drop_duplicates(['scan_start', 'scan_mid', 'scan_end']).shape[0]} "
        "triplets of the held-out subjects, the middle visit predicted from the two around it "
        "(LDAE at 20 DDIM steps) and scored against the real scan, by gap (months) to the "
        "nearest given visit:", "",
        markdown_table(summary), "",
    ])
    OUTPUT.mkdir(parents=True, exist_ok=True)
    write_atomically(OUTPUT / f"{name}.json",
                     lambda temporary: temporary.write_text(json.dumps(result, indent=2) + "\n"))
    write_atomically(OUTPUT / f"{name}.md", lambda temporary: temporary.write_text(markdown))
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
