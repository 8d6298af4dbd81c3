"""The demo study: synthetic cohort -> fit -> embed -> probe -> compare -> report.

The report (``report.html``, figures embedded, and its twin ``report.md``) holds the
cohort, the training curves, the probes with confidence intervals, the model
comparison, the generative figures (reconstruction, variations, manipulation toward
AD, interpolation of a missing visit), the cohort analysis (map, a retrieval
example, quality control, site prediction) and the run's settings and versions.
"""

import numbers
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
import torch
from matplotlib import pyplot
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mean_absolute_error
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from . import __version__
from .cohort_map import cohort_map, plot_cohort_map
from .datasets import make_synthetic_cohort
from .encoder import LDAEEncoder
from .exceptions import InputError, OutOfDistributionWarning
from .generation import embedding_direction
from .metrics import ssim
from .plotting import (plot_interpolation, plot_manipulation, plot_reconstruction,
                       plot_training_history, plot_variations)
from .presets import resolve_config
from .probes import PCA_OF_VOXELS, probe_embeddings
from .quality_control import QualityControl, reconstruction_error, simulate_corruptions
from .report import Report
from .retrieval import SimilarScans, recall_at_k
from .site_effects import site_prediction_score
from .stats import bootstrap_ci, rank_roc_auc

DEMO_SHAPE = (32, 40, 32)
MIN_SUBJECTS = 20
# The full demo trains the autoencoder 14 epochs where the small preset trains 30, and stage
# 3 50 epochs instead of 60 (621 s with 60 in python benchmarks/bench_demo.py): the demo's
# 10-minute budget has neither. Its autoencoder steps 2 scans at a time instead of 8: 4x the
# steps in no more time: held-out SSIM 0.961 / 0.954 / 0.950 on three seeds, where batch 8
# gave 0.911 / 0.935 on two (python benchmarks/bench_autoencoder.py; docs/benchmarks.md).
FULL = dict(n_subjects=60, preset="small", ddim_steps=20,
            overrides=dict(ae_epochs=14, ae_batch_size=2, representation_epochs=50))
# --quick trains the tiny networks a few epochs on a third of the subjects and decodes
# with fewer DDIM steps: a smoke run of the whole path, not a result. With the small
# networks (4/10/10 epochs) it took 340 s on a 2-core CPU without native bf16; the tiny
# ones take 112 s there (python benchmarks/bench_demo.py --quick --name avx2).
QUICK = dict(n_subjects=20, preset="tiny", ddim_steps=10,
             overrides=dict(ae_epochs=2, diffusion_epochs=5, representation_epochs=5))
MANIPULATION_GAPS = (-2, -1, 0, 1, 2)
EXPECTED = {"full": "8 to 16 minutes on 2 CPU cores with native bf16 (AVX-512 BF16 or AMX), "
                    "several times longer without",
            "quick": "about 2 minutes on 2 CPU cores"}
# 482 s on one such machine at ae_batch_size=8; 958 s at 2 on one about 1.9x slower
# (python benchmarks/bench_demo.py, docs/benchmarks/demo.md).
UNTRAINED = "LDAE encoder untrained (control)"


def run_demo(output_dir="ldae-demo", *, quick=False, n_subjects=None, encoder=None, random_state=0,
             verbose=1):
    """Run the whole LDAE study on a synthetic cohort and write a report.

    Parameters
    ----------
    output_dir : str or Path, default="ldae-demo"
        Folder receiving ``report.html``, ``report.md`` and ``figures/``.
    quick : bool, default=False
        The tiny networks, fewer subjects, epochs and DDIM steps (a smoke run of the
        whole path).
    n_subjects : int, optional
        Overrides the number of synthetic subjects (at least ``MIN_SUBJECTS``, 20).
    encoder : LDAEEncoder, optional
        An unfitted model to use instead of the demo's (the "small" preset, "tiny"
        with ``quick``; it is cloned); the
        cohort is rendered on its grid (``image_shape``).
    random_state : int, default=0
        Seed of the cohort, the model and the folds.
    verbose : int, default=1
        0 silent, 1 progress messages and bars.

    Returns
    -------
    dict
        ``cohort``, ``encoder``, ``probes`` (ProbeResults), ``report`` (path of the
        HTML report) and ``markdown`` (path of its Markdown twin).
    """
    settings = QUICK if quick else FULL
    n_subjects = settings["n_subjects"] if n_subjects is None else n_subjects
    if not isinstance(n_subjects, numbers.Integral) or n_subjects < MIN_SUBJECTS:
        raise InputError(f"n_subjects={n_subjects!r}: the demo needs at least {MIN_SUBJECTS} "
                         "subjects (its probes use 5 subject-grouped folds of AD and CN)")
    say = print if verbose else (lambda *args, **kwargs: None)
    timings = {}
    say(f"ldae demo ({'quick' if quick else 'full'}): a synthetic cohort of {n_subjects} subjects "
        "-> fit LDAE (3 stages) and its untrained control -> embed -> linear probes against "
        "PCA of the voxels -> generative tools -> cohort analysis -> report in "
        f"{output_dir}. Expected at the default size: {EXPECTED['quick' if quick else 'full']} "
        "(docs/benchmarks/demo.md).")

    def timed(step, compute):
        start = time.perf_counter()
        result = compute()
        timings[step] = time.perf_counter() - start
        return result

    shape = DEMO_SHAPE if encoder is None else resolve_config(
        encoder.preset, image_shape=encoder.image_shape).image_shape
    cohort = timed("cohort", lambda: make_synthetic_cohort(
        n_subjects, shape=shape, random_state=random_state))
    frame = cohort.frame
    say(f"cohort: {len(frame)} scans of {frame.subject.nunique()} subjects "
        f"({_counts(frame.diagnosis)}) in {timings['cohort']:.1f} s")

    if encoder is None:
        encoder = LDAEEncoder(preset=settings["preset"], random_state=random_state, verbose=verbose,
                              **settings["overrides"])
    else:
        encoder = clone(encoder)
    if encoder.checkpoint_dir is None:  # so that the control below reuses stages 1 and 2
        encoder.set_params(checkpoint_dir=Path(output_dir) / "checkpoints")
    timed("fit", lambda: encoder.fit(cohort.images, groups=frame.subject))
    say(f"fit: {timings['fit']:.1f} s (" + ", ".join(
        f"{stage} {seconds:.0f} s" for stage, seconds in encoder.fit_seconds_.items()) + ")")

    # The same fit without stage-3 training: what the trained code adds over its initial weights.
    control = clone(encoder).set_params(representation_epochs=0, verbose=0)
    timed("control fit", lambda: control.fit(cohort.images, groups=frame.subject))
    embeddings = timed("embed", lambda: encoder.transform(cohort.images))
    pooled_latents = encoder.encode_latent(cohort.images).mean(axis=(2, 3, 4))
    probes = timed("probes", lambda: probe_embeddings(
        {"LDAE": embeddings, UNTRAINED: control.transform(cohort.images),
         "AE latent (mean-pooled)": pooled_latents}, frame,
        voxels=cohort.images, random_state=random_state))
    table, comparisons = probes.table(), probes.comparisons("LDAE")
    say("\nLinear probes, subject-grouped 5-fold CV (mean ± sd over folds)\n")
    say(table.to_string())
    say("\nLDAE against the others (corrected resampled t-test, Holm)\n")
    say(comparisons[["metric", "model_a", "model_b", "mean_difference", "pvalue",
                     "pvalue_corrected"]].to_string(index=False))

    report = Report("ldae demo report")
    _verdict_section(report, probes)
    _cohort_section(report, cohort, quick)
    _training_section(report, encoder)
    _probe_section(report, probes, table, random_state)
    _comparison_section(report, comparisons)
    say("\ngenerative tools: reconstruction, variations, manipulation, interpolation ...")
    timed("generative", lambda: _generative_section(report, encoder, cohort, embeddings,
                                                    settings["ddim_steps"], random_state))
    say(f"generative tools: {timings['generative']:.1f} s\ncohort analysis: map, similar scans, "
        "quality control, site effects ...")
    timed("cohort analysis", lambda: _analysis_section(report, encoder, cohort, embeddings,
                                                       random_state))
    say(f"cohort analysis: {timings['cohort analysis']:.1f} s")
    _run_section(report, encoder, timings, settings["ddim_steps"], quick)
    html_path, markdown_path = report.write(output_dir)
    say(f"\nreport: {html_path.resolve()}\n        {markdown_path.resolve()}")
    return {"cohort": cohort, "encoder": encoder, "probes": probes, "report": html_path,
            "markdown": markdown_path}


def _counts(values):
    return ", ".join(f"{count} {name}" for name, count in values.value_counts().items())


def _verdict_section(report, probes):
    """The run's answer first: did LDAE beat PCA of the voxels and its untrained control?"""
    findings = []
    for study, metric, label, higher_is_better in (
            (probes.diagnosis, "roc_auc", "AD-vs-CN ROC-AUC", True),
            (probes.age, "mae", "age MAE (years)", False)):
        means = study.scores.groupby("model")[metric].apply(lambda scores: scores.abs().mean())
        ldae = means["LDAE"]
        verdicts = []
        for other, name in ((PCA_OF_VOXELS, "PCA of the voxels"),
                            (UNTRAINED, "the untrained control")):
            value = means[other]
            better = ldae > value if higher_is_better else ldae < value
            verdicts.append(f"{'better than' if better else 'not better than'} {name} ({value:.3f})")
        findings.append(f"LDAE's {label} is {ldae:.3f}: " + " and ".join(verdicts))
    report.text("**On this run** (means over subject-grouped folds; the tables below give the "
                "spread and the tests): " + "; ".join(findings) + ". One run on one synthetic "
                "cohort is an anecdote: docs/benchmarks/model_quality.md has three seeds.")


def _cohort_section(report, cohort, quick):
    frame = cohort.frame
    grid = "x".join(map(str, cohort.images.shape[1:]))
    report.heading("Cohort")
    report.text(
        f"Synthetic longitudinal cohort ({'quick' if quick else 'full'} mode): {len(frame)} scans "
        f"of {frame.subject.nunique()} subjects on a {grid} grid, "
        f"{frame.site.nunique()} sites. Built from the MNI template with known atrophy, so the "
        "ground truth (diagnosis, age, ventricle volume) is exact. It is not ADNI.")
    by_diagnosis = frame.groupby("diagnosis", observed=True).agg(
        scans=("subject", "size"), subjects=("subject", "nunique"), age_mean=("age", "mean"),
        age_sd=("age", "std"), ventricles_ml=("ventricle_volume", "mean"))
    report.table(by_diagnosis.reset_index())


def _training_section(report, encoder):
    report.heading("Training")
    config = encoder.config_
    report.text(f"Loss per epoch of each stage (validation on held-out subjects), trained on "
                f"{encoder.training_device_}.")
    marks = ({"representation": (config.encoder_warmup_fraction * config.representation_epochs,
                                 "encoder warm-up ends")}
             if config.encoder_warmup_fraction > 0 else None)
    report.figure(plot_training_history(encoder.history_, marks=marks), "training",
                  "Autoencoder, latent diffusion and PDAE representation stages")
    curves = encoder.history_["representation"]
    if curves.get("val_loss_shuffled_codes"):
        report.text("On the held-out subjects, the stage-3 loss with other scans' codes is "
                    f"{curves['val_loss_shuffled_codes'][-1] / curves['val_loss'][-1]:.3f}× "
                    "the loss with their own at the last epoch (1: the code does not steer "
                    "the denoiser).")


def _probe_section(report, probes, table, random_state):
    report.heading("Linear probes")
    report.text(
        "AD vs CN logistic regression and age ridge regression on standardised features, "
        "subject-grouped stratified 5-fold cross-validation (mean ± sd over folds). The encoder "
        "was trained once, without labels, on every scan (a transductive representation). "
        f"'{UNTRAINED}' is the same fit with representation_epochs=0: the semantic encoder at "
        "the initial weights stage 3 started from, over the same autoencoder and denoiser.")
    report.table(table.reset_index(names="features"))
    report.text("The headline figures are the means over folds above. For their uncertainty: "
                "the out-of-fold predictions of all folds pooled, with 95% subject-level "
                "bootstrap confidence intervals (1,000 resamples of subjects); a pooled ROC-AUC "
                "is not the mean of the per-fold ones.")
    report.table(_bootstrap_table(probes, random_state))
    try:
        roc = probes.diagnosis.plot_roc(per_subject=True)
    except InputError:  # a subject's diagnosis changed between CN and AD: curve over scans
        roc = probes.diagnosis.plot_roc(per_subject=False)
    report.figure(roc, "roc", "Pooled out-of-fold ROC curves, AD vs CN, with DeLong 95% CIs "
                  "of the pooled ROC-AUC")
    pyplot.close(roc)


def _bootstrap_table(probes, random_state):
    rows = []
    diagnosis, age = probes.diagnosis.predictions, probes.age.predictions
    for model in probes.age.models:
        row = {"features": model}
        if model in probes.diagnosis.models:
            part = diagnosis[diagnosis.model == model]
            interval = bootstrap_ci(part.y_true, part.score, rank_roc_auc, groups=part.subject,
                                    random_state=random_state)
            row["pooled roc_auc [95% CI]"] = (f"{interval.estimate:.3f} "
                                              f"[{interval.low:.3f}, {interval.high:.3f}]")
        part = age[age.model == model]
        interval = bootstrap_ci(part.y_true, part.y_pred, mean_absolute_error, groups=part.subject,
                                random_state=random_state)
        row["pooled age mae [95% CI]"] = (f"{interval.estimate:.2f} "
                                          f"[{interval.low:.2f}, {interval.high:.2f}]")
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


def _comparison_section(report, comparisons):
    report.heading("Model comparison")
    report.text("LDAE against each baseline: corrected resampled t-test (Nadeau & Bengio) on the "
                "per-fold scores, p-values Holm-corrected over the comparisons. mean_difference "
                "is LDAE − baseline, so a positive difference favours LDAE for roc_auc, "
                "accuracy, precision, recall and f1, and a negative one for mae and rmse; the "
                "column 'favours' says which.")
    shown = comparisons[["metric", "model_a", "model_b", "mean_difference", "statistic",
                         "pvalue", "pvalue_corrected"]].copy()
    lower_is_better = shown.metric.isin(["mae", "rmse"])
    ahead = np.where(lower_is_better, shown.mean_difference < 0, shown.mean_difference > 0)
    shown["favours"] = np.where(ahead, shown.model_a, shown.model_b)
    report.table(shown)


def _generative_section(report, encoder, cohort, embeddings, steps, random_state):
    frame, images, affine = cohort.frame, cohort.images, cohort.affine
    report.heading("Generative tools")
    baseline = np.flatnonzero((frame.months == 0).to_numpy())
    scans = images[baseline[:2]]
    reconstructions = encoder.reconstruct(scans, steps=steps)
    report.text(f"Reconstruction from (y, x_T) with {steps} DDIM steps: SSIM to the input "
                + ", ".join(f"{value:.3f}" for value in ssim(reconstructions, scans)) + ".")
    report.figure(plot_reconstruction(scans, reconstructions, affine=affine), "reconstruction",
                  "Original, reconstruction and difference (reconstruction − original)")

    variations = encoder.generate(embeddings[baseline[:2]], n_variations=3,
                                  random_state=random_state, steps=steps)
    report.figure(plot_variations(variations, originals=scans, affine=affine), "variations",
                  "Stochastic variations: the same embedding decoded from different noise")

    alphas, moved_scan = _manipulation(report, encoder, frame, images, embeddings, steps)
    report.figure(plot_manipulation(moved_scan[len(alphas) // 2], moved_scan, alphas,
                                    labels=[f"{k:+d} AD − CN gaps" for k in MANIPULATION_GAPS],
                                    affine=affine), "manipulation",
                  "A CN scan moved along the AD-vs-CN probe direction; differences to the "
                  "scan decoded at 0 gaps")

    _interpolation(report, encoder, frame, images, affine, steps)


def _manipulation(report, encoder, frame, images, embeddings, steps):
    labelled = frame.diagnosis.isin(["CN", "AD"]).to_numpy()
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    is_ad = (frame.diagnosis[labelled] == "AD").to_numpy()
    probe.fit(embeddings[labelled], is_ad)
    unit = embedding_direction(probe, encoder.config_.embedding_dim)
    projected = embeddings[labelled] @ unit
    gap = projected[is_ad].mean() - projected[~is_ad].mean()
    alphas = [k * gap for k in MANIPULATION_GAPS]
    control = np.flatnonzero(((frame.diagnosis == "CN") & (frame.months == 0)).to_numpy())[0]
    moved = encoder.manipulate(images[control:control + 1], probe, alphas, steps=steps)[:, 0]
    decision = probe.decision_function(encoder.transform(moved))
    report.text(
        f"Manipulation of scan {frame.subject.iloc[control]} {frame.session.iloc[control]} (CN) "
        f"along the probe direction at α = {', '.join(f'{k:+d}' for k in MANIPULATION_GAPS)} "
        f"AD − CN gaps (gap {gap:.4g} in embedding units). Probe decision on the re-embedded "
        f"outputs: {', '.join(f'{value:.2f}' for value in decision)}.")
    return alphas, moved


def _interpolation(report, encoder, frame, images, affine, steps):
    visits = frame.groupby("subject").months.transform("count")
    subject = frame.subject[visits >= 3].iloc[0]
    rows = np.flatnonzero((frame.subject == subject).to_numpy())
    first, middle, last = rows[0], rows[len(rows) // 2], rows[-1]
    months = frame.months.to_numpy()
    middle_t = float((months[middle] - months[first]) / (months[last] - months[first]))
    positions = [0.0, 0.25, 0.5, 0.75, 1.0]
    # one call for the sequence and the predicted middle visit: the endpoints are encoded once
    *interpolated, predicted = encoder.interpolate(
        images[first:first + 1], images[last:last + 1], positions + [middle_t], steps=steps)[:, 0]
    report.text(
        f"Interpolation between the visits at months {months[first]:g} and {months[last]:g} of "
        f"{subject}; the visit at month {months[middle]:g} (t = {middle_t:.2f}) is predicted with "
        f"SSIM {ssim(predicted[None], images[middle:middle + 1])[0]:.3f} to the real scan.")
    report.figure(plot_interpolation(np.stack(interpolated), positions, real_middle=images[middle],
                                     middle_t=middle_t, affine=affine), "interpolation",
                  "Interpolated visits next to the real middle visit")


def _analysis_section(report, encoder, cohort, embeddings, random_state):
    frame, images = cohort.frame, cohort.images
    report.heading("Cohort analysis")
    mapped = cohort_map(embeddings, frame)
    report.figure(plot_cohort_map(mapped, color="diagnosis"), "cohort_map", "PCA map of the embeddings, visits of a subject joined")

    ids = (frame.subject + " " + frame.session).to_numpy()
    index = SimilarScans(n_neighbors=5).fit(embeddings, subjects=frame.subject, index=ids)
    query = np.flatnonzero(frame.subject.duplicated(keep=False).to_numpy())[0]
    found = index.query()
    example = found[found["query"] == ids[query]].reset_index(drop=True)
    report.text(f"The 5 scans most similar to {ids[query]} (cosine distance on standardised "
                f"embeddings, the query left out). Recall of a subject's own other visits "
                f"among the 5 nearest: {recall_at_k(embeddings, frame.subject, k=5):.2f}.")
    report.table(example)

    kinds = ["artefact", "upside-down", "inverted contrast", "noise"]
    corrupted = simulate_corruptions(images[:len(kinds)], kinds, random_state=random_state)
    with warnings.catch_warnings():  # the corrupted copies are meant to be flagged, below
        warnings.simplefilter("ignore", OutOfDistributionWarning)
        mixed = np.concatenate([embeddings, encoder.transform(corrupted)])
    errors = reconstruction_error(encoder, np.concatenate([images, corrupted]))
    outside = encoder.training_distribution_.outside(mixed)
    truth = pd.DataFrame({"scan": list(ids) + [f"corrupted: {kind}" for kind in kinds],
                          "out_of_distribution": outside})
    qc = QualityControl(random_state=random_state).fit(mixed, reconstruction_error=errors)
    scores = qc.score_table(mixed, errors, frame=truth)
    report.text(f"Quality control on the cohort with {len(kinds)} deliberately corrupted copies "
                f"mixed in (robust Mahalanobis distance of the embedding and autoencoder "
                f"reconstruction error, as z-scores; flagged above {qc.threshold}): "
                f"{int(scores.flagged.sum())} scans flagged. The column out_of_distribution is "
                f"the warning of LDAEEncoder.transform (embedding far from the training scans'): "
                f"{int(outside.sum())} scans, {int(outside[len(ids):].sum())} of them corrupted "
                "copies. The 10 highest scores:")
    report.table(scores.head(10))

    sites = site_prediction_score(embeddings, frame.site, frame.subject, random_state=random_state)
    report.text("Acquisition site predicted from the embedding (balanced accuracy, subject-grouped "
                "5-fold CV), before and after regressing site out within training folds:")
    report.table(sites.table())


def _run_section(report, encoder, timings, steps, quick):
    report.heading("Run")
    config = encoder.config_
    settings = pd.DataFrame({"setting": ["mode", "preset", "image shape", "embedding size",
                                         "epochs (AE, diffusion, representation)", "DDIM steps",
                                         "device", "random_state"],
                             "value": ["quick" if quick else "full", encoder.preset,
                                       "x".join(map(str, config.image_shape)),
                                       config.embedding_dim,
                                       f"{config.ae_epochs}, {config.diffusion_epochs}, "
                                       f"{config.representation_epochs}",
                                       steps, encoder.training_device_,
                                       encoder.random_state]})
    report.table(settings.astype(str))
    report.text("Seconds: " + ", ".join(f"{step} {value:.1f}" for step, value in timings.items())
                + "; per training stage: " + ", ".join(
                    f"{stage} {value:.1f}" for stage, value in encoder.fit_seconds_.items()) + ".")
    report.text(f"Versions: ldae {__version__}, Python {platform.python_version()}, "
                f"torch {torch.__version__}, scikit-learn {sklearn.__version__}, "
                f"numpy {np.__version__}, pandas {pd.__version__}.")
