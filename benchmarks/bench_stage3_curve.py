"""Stage 3 epoch by epoch: does the code learn factors that generalise, and when?

For one seed of the demo's setting (a synthetic cohort of 60 subjects, the `small` preset
with the demo's epochs), LDAE is fitted on 80 % of the subjects; the other 20 % are held
out, as in bench_model_quality.py. Every --every epochs of stage 3, the averaged (EMA)
semantic encoder and gradient estimator, the weights `fit` keeps at the end, are copied,
calibrated on the training scans as `fit` calibrates its final encoder, and scored:

- steering: the stage-3 loss with shuffled codes over the loss with each scan's own
  code (`ldae.representation.code_steering`), on the held-out subjects and on as many
  training scans;
- the demo's linear probes (subject-grouped 5-fold CV over all scans): AD-vs-CN ROC-AUC
  and age MAE, beside the PCA of the voxels;
- what the code encodes: cross-validated ridge R² for the cohort's known factors
  (hippocampus, ventricles, head size, age).

Epoch 0 is the untrained-encoder control. Each row gives the seconds of stage-3 training
it took. The copies are taken inside the one fit (a wrapper around the stage's step), so
epoch k is the model after k of the fit's epochs, on its learning-rate schedule, not a fit
of k epochs.

    python benchmarks/bench_stage3_curve.py --checkpoints /tmp/curve     # seed 0, every 5 epochs
    python benchmarks/bench_stage3_curve.py --set representation_epochs=100 --name repr100 \\
        --checkpoints /tmp/curve                                          # stages 1-2 reused
    python benchmarks/bench_stage3_curve.py --quick             # 20 subjects, 1/2/4 epochs

Writes docs/benchmarks/stage3_curve[_quick][_NAME].json and .md.
"""

import argparse
import copy
import dataclasses
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import GroupShuffleSplit

import ldae.encoder
from ldae import LDAEEncoder
from ldae.datasets import make_synthetic_cohort
from ldae.demo import DEMO_SHAPE, FULL
from ldae.diffusion import NoiseSchedule
from ldae.generation import autoencoder_reconstruction
from ldae.imaging import as_volume_dataset
from ldae.metrics import ssim
from ldae.model_selection import markdown_table
from ldae.probes import PCA_OF_VOXELS, probe_embeddings
from ldae.representation import calibrate_code_statistics, code_steering

from bench_model_quality import FACTORS, factor_r2, mean_score, parse_setting, write_result

QUICK = dict(n_subjects=20, every=1,
             overrides=dict(ae_epochs=1, diffusion_epochs=2, representation_epochs=4))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=None, help="epochs between copies (5)")
    parser.add_argument("--subjects", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--name", default=None)
    parser.add_argument("--checkpoints", default=None, metavar="DIR",
                        help="keeps stages 1-2, so that variants of stage 3 reuse them")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else dict(n_subjects=FULL["n_subjects"], every=5,
                                             overrides=FULL["overrides"])
    overrides = {**settings["overrides"], **dict(map(parse_setting, args.set))}
    result = run(args.seed, args.subjects or settings["n_subjects"],
                 args.every or settings["every"], overrides, args.checkpoints)
    result.update(command=" ".join(["python benchmarks/bench_stage3_curve.py",
                                    *(sys.argv[1:] if argv is None else argv)]),
        machine={"processor": platform.processor() or platform.machine(),
                 "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                 "threads": torch.get_num_threads(), "torch": torch.__version__},
        load_average_end=os.getloadavg())
    write_result("stage3_curve", args, result, render)


def run(seed, n_subjects, every, overrides, checkpoint_root):
    cohort = make_synthetic_cohort(n_subjects, shape=DEMO_SHAPE, random_state=seed)
    frame, images = cohort.frame, cohort.images
    train, held_out = next(GroupShuffleSplit(1, test_size=0.2, random_state=seed)
                           .split(images, groups=frame.subject))
    load_before = os.getloadavg()
    snapshots = []
    with tempfile.TemporaryDirectory() as scratch:
        settings = {"preset": "small", "random_state": seed, "validation_fraction": 0,
                    "checkpoint_dir": Path(checkpoint_root or scratch) / f"seed-{seed}",
                    **overrides}
        # stages 1-2 first (checkpointed), so that the timed stage 3 below trains alone
        LDAEEncoder(**{**settings, "representation_epochs": 0}).fit(images[train])
        with mock.patch("ldae.encoder.representation_stage", _copying_stage_3(every, snapshots)):
            model = LDAEEncoder(**settings).fit(images[train])

    volumes = as_volume_dataset(images, model.preprocessing_)
    autoencoder_ssim = ssim(autoencoder_reconstruction(model, images[held_out]),
                            np.stack([volumes[int(i)] for i in held_out]))
    latents = torch.as_tensor(model.encode_latent(images))
    rng = np.random.default_rng(seed)
    train_sample = np.sort(rng.choice(train, size=min(len(held_out), len(train)), replace=False))
    rows, pca = [], None
    for snapshot in snapshots:
        _load(model, snapshot, latents[train])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # out-of-distribution warnings of early copies
            embeddings = model.transform(images)
        probes = probe_embeddings({"LDAE": embeddings}, frame, random_state=seed,
                                  voxels=images if pca is None else None)
        if pca is None:
            pca = {"roc_auc": mean_score(probes.diagnosis, PCA_OF_VOXELS, "roc_auc"),
                   "age_mae": mean_score(probes.age, PCA_OF_VOXELS, "mae")}
        steering = {part: code_steering(model.unet_, model.estimator_, model.semantic_encoder_,
                                        latents[index], latents[index], NoiseSchedule(),
                                        repeats=2, random_state=seed)
                    for part, index in (("held_out", held_out), ("train", train_sample))}
        rows.append({"epoch": snapshot["epoch"], "seconds": snapshot["seconds"],
                     "steering_held_out": _ratio(steering["held_out"]),
                     "steering_train": _ratio(steering["train"]),
                     "roc_auc": mean_score(probes.diagnosis, "LDAE", "roc_auc"),
                     "age_mae": mean_score(probes.age, "LDAE", "mae"),
                     "factor_r2": factor_r2(embeddings, frame)})
        print(rows[-1], flush=True)
    return {"seed": seed, "subjects": n_subjects, "scans": len(frame), "train_scans": len(train),
            "held_out_scans": len(held_out), "every": every,
            "autoencoder_ssim": float(autoencoder_ssim.mean()), "overrides": overrides,
            "pca_of_voxels": {**pca,
                              "factor_r2": factor_r2(images.reshape(len(images), -1), frame)},
            "fit_seconds": model.fit_seconds_, "load_average_start": load_before, "curve": rows}


def _copying_stage_3(every, snapshots):
    """A stand-in for ``representation_stage`` whose stage copies its EMA networks every
    ``every`` epochs (and before the first) into ``snapshots``, with the seconds it had run."""
    original = ldae.encoder.representation_stage

    def make_stage(*args, steps_per_epoch, **kwargs):
        stage = original(*args, steps_per_epoch=steps_per_epoch, **kwargs)
        start, steps = time.perf_counter(), [0]

        def copy_averages(epoch):
            snapshots.append({"epoch": epoch, "seconds": time.perf_counter() - start, **{
                name: copy.deepcopy(average.module.state_dict())
                for name, average in stage.averages.items()}})

        def step(batch, generator):
            loss = stage.step(batch, generator)
            steps[0] += 1
            epoch, end_of_epoch = divmod(steps[0], steps_per_epoch)
            if end_of_epoch == 0 and epoch % every == 0:
                copy_averages(epoch)
            return loss

        copy_averages(0)
        return dataclasses.replace(stage, step=step)

    return make_stage


def _load(model, snapshot, train_latents):
    model.semantic_encoder_.load_state_dict(snapshot["semantic_encoder"])
    model.estimator_.load_state_dict(snapshot["estimator"])
    calibrate_code_statistics(model.semantic_encoder_, torch.split(train_latents, 16))


def _ratio(losses):
    return losses["shuffled codes"] / losses["own code"]


def render(result):
    pca = result["pca_of_voxels"]
    rows = [{"epoch": row["epoch"], "stage-3 s": f"{row['seconds']:.0f}",
             "shuffled/own (held out)": f"{row['steering_held_out']:.3f}",
             "shuffled/own (train)": f"{row['steering_train']:.3f}",
             "AUC LDAE": f"{row['roc_auc']:.4f}", "MAE LDAE": f"{row['age_mae']:.3f}",
             **{f"R² {factor}": f"{row['factor_r2'][factor]:.3f}" for factor in FACTORS}}
            for row in result["curve"]]
    pca_r2 = ", ".join(f"{factor} {pca['factor_r2'][factor]:.3f}" for factor in FACTORS)
    fit = "/".join(f"{seconds:.0f}" for seconds in result["fit_seconds"].values())
    return "\n".join([
        f"# Stage 3 epoch by epoch (seed {result['seed']}, {result['subjects']} subjects)", "",
        f"Command: `{result['command']}`; settings {result['overrides']}.", "",
        f"{result['train_scans']} training scans, {result['held_out_scans']} held out (whole "
        f"subjects); autoencoder SSIM on the held-out scans {result['autoencoder_ssim']:.4f}; "
        "probes over all scans by subject-grouped 5-fold CV. Epoch 0 is the untrained "
        f"control. PCA of the voxels: ROC-AUC {pca['roc_auc']:.4f}, age MAE {pca['age_mae']:.3f}, "
        f"R² {pca_r2}. R²: cross-validated ridge R² of the embedding for the cohort's known "
        "factors (as in bench_model_quality.py). "
        f"Fit seconds per stage {fit}; {result['machine']['threads']} torch threads, "
        f"{result['machine']['cpu_capability']}, load average "
        f"{result['load_average_start'][0]:.2f} at the start, "
        f"{result['load_average_end'][0]:.2f} at the end.", "",
        markdown_table(pd.DataFrame(rows)), ""])


if __name__ == "__main__":
    main()
