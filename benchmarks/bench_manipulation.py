"""Counterfactual manipulation toward AD on the synthetic cohort: do the ventricles grow?

Fits the "small" LDAEEncoder on a synthetic cohort (the demo's budget), fits an
AD-vs-CN logistic probe (StandardScaler + LogisticRegression) on the embeddings,
and moves the baseline scans of CN subjects along the probe's direction with
``LDAEEncoder.manipulate`` at alpha = k · (AD − CN gap), k in (−2, −1, 0, 1, 2),
where the gap is the difference of the AD and CN mean embeddings projected on
the direction (k = 1 moves a scan by the average AD − CN distance along it). In
every output it measures the ventricles as
the volume (mL) of dark voxels (intensity < 0.6) inside the template's
lateral-ventricle region (ventricle probability > 0.3, dilated by 2 voxels), a
measure first validated against the cohort's true ventricle volumes on the real
scans and on their autoencoder reconstructions. Reports the change of this
volume from alpha = 0 to alpha = +2 gaps (mean, sd, paired effect size d_z, paired
t-test), its rank correlation with alpha per scan, the probe's decision function
on the re-embedded outputs, and, for scale, the AD − CN difference of the same
measure on the real scans.

    python benchmarks/bench_manipulation.py            # 60 subjects
    python benchmarks/bench_manipulation.py --quick    # 20 subjects, fewer epochs
    python benchmarks/bench_manipulation.py --random-state 1   # another cohort and fit

Writes docs/benchmarks/manipulation[_quick][_seed<N>].json, .md and .png (no
suffix for seed 0).
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage, stats
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ldae import LDAEEncoder
from ldae._files import write_atomically
from ldae.datasets import make_synthetic_cohort
from ldae.datasets._template import VENTRICLES, template_on_grid
from ldae.demo import DEMO_SHAPE, FULL, QUICK
from ldae.generation import autoencoder_reconstruction, embedding_direction
from ldae.imaging import as_volume_dataset
from ldae.imaging.grid import MNI_FIELD_OF_VIEW_MM
from ldae.metrics import ssim
from ldae.plotting import plot_manipulation

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
STEPS_IN_GAPS = (-2, -1, 0, 1, 2)
DARK = 0.6
VENTRICLE_PROBABILITY = 0.3
DILATION_VOXELS = 2


def ventricle_mask(shape):
    """The template's lateral-ventricle region on the cohort's grid."""
    probability = template_on_grid(shape, MNI_FIELD_OF_VIEW_MM).channels[VENTRICLES].numpy()
    return ndimage.binary_dilation(probability > VENTRICLE_PROBABILITY, iterations=DILATION_VOXELS)


def ventricle_volume(volumes, mask, voxel_ml):
    """Dark-voxel volume (mL) inside ``mask`` of each volume (..., D, H, W)."""
    return (volumes[..., mask] < DARK).sum(-1) * voxel_ml


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--random-state", type=int, default=0)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    n_scans = 6 if args.quick else 12

    start = time.perf_counter()
    cohort = make_synthetic_cohort(settings["n_subjects"], shape=DEMO_SHAPE,
                                   random_state=args.random_state)
    frame = cohort.frame
    encoder = LDAEEncoder(preset="small", random_state=args.random_state, verbose=1,
                          **settings["overrides"]).fit(cohort.images, groups=frame.subject)
    fit_seconds = time.perf_counter() - start

    mask = ventricle_mask(DEMO_SHAPE)
    voxel_ml = abs(np.linalg.det(cohort.affine[:3, :3])) / 1000.0
    dataset = as_volume_dataset(cohort.images, encoder.preprocessing_)
    preprocessed = np.stack([dataset[i] for i in range(len(dataset))])
    real = ventricle_volume(preprocessed, mask, voxel_ml)
    autoencoded = autoencoder_reconstruction(encoder, cohort.images)
    reconstructed = ventricle_volume(autoencoded, mask, voxel_ml)
    truth = frame["ventricle_volume"].to_numpy()

    embeddings = encoder.transform(cohort.images)
    diseased = frame["diagnosis"].isin(["CN", "AD"]).to_numpy()
    is_ad = (frame["diagnosis"] == "AD").to_numpy()
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(embeddings[diseased], is_ad[diseased])
    unit = embedding_direction(probe, encoder.config_.embedding_dim)
    projection = embeddings @ unit
    gap = float(projection[is_ad].mean() - projection[(frame["diagnosis"] == "CN").to_numpy()].mean())
    alphas = [k * gap for k in STEPS_IN_GAPS]

    chosen = np.flatnonzero(((frame["diagnosis"] == "CN") & (frame["months"] == 0)).to_numpy())[:n_scans]
    start = time.perf_counter()
    moved = encoder.manipulate(cohort.images[chosen], probe, alphas)  # (n_alphas, n_scans, ...)
    manipulate_seconds = time.perf_counter() - start
    volumes = ventricle_volume(moved, mask, voxel_ml)  # (n_alphas, n_scans)
    decision = probe.decision_function(
        encoder.transform(moved.reshape(-1, *DEMO_SHAPE))).reshape(volumes.shape)
    rising = np.all(np.diff(decision, axis=0) > 0, axis=0)  # per scan

    zero, top = STEPS_IN_GAPS.index(0), STEPS_IN_GAPS.index(2)
    change = volumes[top] - volumes[zero]
    test = stats.ttest_rel(volumes[top], volumes[zero])
    rank = [stats.spearmanr(STEPS_IN_GAPS, volumes[:, i]).statistic if np.ptp(volumes[:, i]) > 0
            else np.nan for i in range(len(chosen))]
    result = {
        "command": "python benchmarks/bench_manipulation.py" + (" --quick" if args.quick else "")
                   + (f" --random-state {args.random_state}" if args.random_state else ""),
        "subjects": int(frame.subject.nunique()),
        "scans": len(frame),
        "manipulated_scans": int(len(chosen)),
        "ddim_steps": encoder.config_.ddim_steps,
        "fit_seconds": fit_seconds,
        "manipulate_seconds": manipulate_seconds,
        "measure": {
            "definition": f"volume (mL) of voxels < {DARK} inside the template lateral-ventricle "
                          f"region (probability > {VENTRICLE_PROBABILITY}, dilated "
                          f"{DILATION_VOXELS} voxels, {int(mask.sum())} voxels)",
            "r_with_true_volume_real_scans": float(np.corrcoef(real, truth)[0, 1]),
            "r_with_true_volume_ae_reconstructions": float(np.corrcoef(reconstructed, truth)[0, 1]),
            "ad_minus_cn_real_scans_ml": float(real[is_ad].mean() - real[frame["diagnosis"] == "CN"].mean()),
            "ad_minus_cn_true_volume_ml": float(truth[is_ad].mean() - truth[frame["diagnosis"] == "CN"].mean()),
        },
        "embedding_sd_mean_over_dimensions": float(embeddings.std(axis=0).mean()),
        "ad_minus_cn_gap_along_direction": gap,
        "ssim_to_scan": {
            "autoencoder_reconstruction": float(ssim(autoencoded[chosen], preprocessed[chosen]).mean()),
            "ldae_output_alpha_0": float(ssim(moved[zero], preprocessed[chosen]).mean()),
        },
        "alpha_in_gaps": list(STEPS_IN_GAPS),
        "alpha": alphas,
        "ventricle_ml_mean_by_alpha": volumes.mean(axis=1).tolist(),
        "max_voxel_change_alpha_minus2_to_plus2": float(np.abs(moved[-1] - moved[0]).max()),
        "change_0_to_plus2_gaps_ml": {"mean": float(change.mean()), "sd": float(change.std(ddof=1)),
                                   "d_z": _number(change.mean() / change.std(ddof=1))
                                   if change.std(ddof=1) > 0 else None,
                                   "t": _number(test.statistic), "pvalue": _number(test.pvalue)},
        "spearman_alpha_vs_volume_per_scan": [_number(value) for value in rank],
        "probe_decision_mean_by_alpha": decision.mean(axis=1).tolist(),
        "probe_decision_increasing_for_all_scans": bool(rising.all()),
        "scans_with_probe_decision_increasing": int(rising.sum()),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
    }
    name = "manipulation" + ("_quick" if args.quick else "") + (
        f"_seed{args.random_state}" if args.random_state else "")
    _write(result, moved, encoder, name)
    return 0


def _write(result, moved, encoder, name):
    OUTPUT.mkdir(parents=True, exist_ok=True)
    write_atomically(OUTPUT / f"{name}.json",
                     lambda temporary: temporary.write_text(json.dumps(result, indent=2) + "\n"))
    plot_manipulation(moved[STEPS_IN_GAPS.index(0), 0], moved[:, 0], result["alpha_in_gaps"],
                      affine=encoder.affine_, output_file=OUTPUT / f"{name}.png",
                      title="first CN scan moved toward AD (alpha in AD − CN gaps)")
    measure, change = result["measure"], result["change_0_to_plus2_gaps_ml"]
    rows = "\n".join(
        f"| {k:+d} | {alpha:.3f} | {volume:.2f} | {decision:.3f} |"
        for k, alpha, volume, decision in zip(result["alpha_in_gaps"], result["alpha"],
                                              result["ventricle_ml_mean_by_alpha"],
                                              result["probe_decision_mean_by_alpha"]))
    lines = [
        f"# Manipulation toward AD ({result['subjects']} subjects, {result['scans']} scans)", "",
        f"Command: `{result['command']}`; {result['manipulated_scans']} CN baseline scans moved "
        f"along the AD-vs-CN probe direction, {result['ddim_steps']} DDIM steps.", "",
        f"Ventricle measure: {measure['definition']}. Correlation with the true ventricle "
        f"volume: r = {measure['r_with_true_volume_real_scans']:.2f} on the real scans, "
        f"{measure['r_with_true_volume_ae_reconstructions']:.2f} on their autoencoder "
        f"reconstructions. AD − CN on the real scans: "
        f"{measure['ad_minus_cn_real_scans_ml']:+.2f} mL (true volumes: "
        f"{measure['ad_minus_cn_true_volume_ml']:+.2f} mL).", "",
        "| alpha (AD − CN gaps) | alpha | ventricle measure (mL, mean) | probe decision (mean) |",
        "|---|---|---|---|", rows, "",
        f"Embedding: mean sd per dimension {result['embedding_sd_mean_over_dimensions']:.4f}; "
        f"AD − CN gap along the probe direction {result['ad_minus_cn_gap_along_direction']:.4f}. "
        f"SSIM to the scans: autoencoder {result['ssim_to_scan']['autoencoder_reconstruction']:.3f}, "
        f"LDAE output at alpha = 0 {result['ssim_to_scan']['ldae_output_alpha_0']:.3f}. "
        f"Largest voxel change between alpha = −2 and +2 gaps: "
        f"{result['max_voxel_change_alpha_minus2_to_plus2']:.2g}.", "",
        f"Change from alpha = 0 to +2 gaps: {change['mean']:+.3f} ± {change['sd']:.3f} mL, "
        f"d_z = {_text(change['d_z'], '.2f')}, paired t = {_text(change['t'], '.2f')}, "
        f"p = {_text(change['pvalue'], '.3g')}. "
        "Spearman(alpha, measure) per scan: "
        + ", ".join(_text(value, ".2f") for value in result["spearman_alpha_vs_volume_per_scan"])
        + f". Probe decision increasing with alpha for every scan: "
        f"{result['probe_decision_increasing_for_all_scans']} "
        f"({result['scans_with_probe_decision_increasing']} of {result['manipulated_scans']}).", "",
        f"Fit {result['fit_seconds']:.0f} s, manipulation {result['manipulate_seconds']:.0f} s "
        f"({result['machine']['threads']} threads). Figure: `{name}.png`.",
    ]
    write_atomically(OUTPUT / f"{name}.md",
                     lambda temporary: temporary.write_text("\n".join(lines) + "\n"))
    print("\n".join(lines))


def _number(value):
    """A float for JSON, None where it is not defined (NaN)."""
    return None if value is None or np.isnan(value) else float(value)


def _text(value, spec):
    return "n/a" if value is None else format(value, spec)


if __name__ == "__main__":
    sys.exit(main())
