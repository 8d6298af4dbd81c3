"""Study benchmark: LDAE against baselines on the synthetic cohort, with the statistics.

Fits LDAEEncoder once, without labels, on every scan of a synthetic cohort (the
paper's unsupervised protocol) and freezes it; ``run_study(frozen_encoder=...)`` then
embeds all scans once and shares the embedding with every fold, so the
representation is transductive (it has seen the test scans, never their labels).
Against it, on the same subject-grouped repeated folds:

- PCA of the voxels (fitted inside each training fold),
- the mean-pooled stage-1 latent of the same encoder (``encoder.encode_latent``).

Reports AD-vs-CN linear probes with corrected resampled t-tests (Holm) and a ROC plot
with DeLong intervals, brain age (BrainAgeRegressor, bias correction fitted on the
training folds) with its report, and per-dimension mixed models of the LDAE embedding
over time (which dimensions change faster in AD), next to the true volumes as a
positive control.

    python benchmarks/bench_study.py            # 80 subjects, preset small, 5x5 CV
    python benchmarks/bench_study.py --quick    # 30 subjects, preset tiny, 3x2 CV

Writes docs/benchmarks/study.{json,md,png} (study_quick.* with --quick).
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LogisticRegression, RidgeCV

from ldae import LDAEEncoder
from ldae.brain_age import BrainAgeRegressor, brain_age_report
from ldae.datasets import make_synthetic_cohort
from ldae.longitudinal import fit_mixed_models
from ldae.model_selection import RepeatedStratifiedGroupKFold, markdown_table, run_study
from ldae.probes import CLASSIFICATION_SCORING, REGRESSION_SCORING, _probe
from ldae.stats import compare_models

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
SHAPE = (32, 40, 32)
MODES = {
    "full": dict(subjects=80, preset="small", n_splits=5, n_repeats=5),
    "quick": dict(subjects=30, preset="tiny", n_splits=3, n_repeats=2),
}
LDAE, LATENT, VOXELS = "LDAE", "AE latent (mean-pooled)", "PCA of voxels"
AD_TERM = "time:diagnosis[T.AD]"
PROTOCOL = (
    "LDAEEncoder was fitted once, without labels, on every scan of the cohort (the "
    "paper's unsupervised protocol) and frozen; run_study(frozen_encoder=...) embeds "
    "all scans once and every fold shares that embedding, so the representation is "
    "transductive: it has seen the test scans, never their labels. The PCA of the "
    "voxels is fitted inside each training fold."
)


class FrozenFeatures(TransformerMixin, BaseEstimator):
    """A fitted encoder's features side by side: embedding | pooled latent | voxels."""

    def __init__(self, encoder):
        self.encoder = encoder

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        embedding = self.encoder.transform(X)
        pooled = self.encoder.encode_latent(X).mean(axis=(2, 3, 4))
        voxels = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
        return np.hstack([embedding, pooled, voxels]).astype(np.float32)

    def columns(self):
        """Column indices of each feature set in the output of :meth:`transform`."""
        sizes = {LDAE: self.encoder.config_.embedding_dim,
                 LATENT: self.encoder.config_.latent_channels,
                 VOXELS: int(np.prod(SHAPE))}
        bounds = np.cumsum([0, *sizes.values()])
        return {name: np.arange(start, stop)
                for name, start, stop in zip(sizes, bounds[:-1], bounds[1:])}

    def __sklearn_is_fitted__(self):
        return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (minutes)")
    parser.add_argument("--subjects", type=int, help="override the number of subjects")
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--n-jobs", type=int, default=None, help="joblib workers over folds")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    settings = dict(MODES[mode], subjects=args.subjects or MODES[mode]["subjects"])
    seconds = {}
    load_at_start = round(os.getloadavg()[0], 1)

    start = time.perf_counter()
    cohort = make_synthetic_cohort(settings["subjects"], shape=SHAPE,
                                   random_state=args.random_state)
    frame, images = cohort.frame, cohort.images
    seconds["cohort"] = time.perf_counter() - start
    print(f"cohort: {len(frame)} scans of {frame.subject.nunique()} subjects")

    start = time.perf_counter()
    encoder = LDAEEncoder(preset=settings["preset"], random_state=args.random_state, verbose=1)
    encoder.fit(images, groups=frame.subject)  # no labels: unsupervised
    seconds["encoder_fit"] = time.perf_counter() - start
    print(f"encoder ({settings['preset']}) fitted without labels in {seconds['encoder_fit']:.0f} s")
    print(PROTOCOL)

    features = FrozenFeatures(encoder)
    columns = features.columns()
    cv = RepeatedStratifiedGroupKFold(settings["n_splits"], n_repeats=settings["n_repeats"],
                                      random_state=args.random_state)

    start = time.perf_counter()
    diagnosis = diagnosis_study(features, columns, images, frame, cv, args.n_jobs)
    seconds["diagnosis_study"] = time.perf_counter() - start
    start = time.perf_counter()
    brain_age = brain_age_study(features, columns, images, frame, cv, args.n_jobs)
    seconds["brain_age_study"] = time.perf_counter() - start
    start = time.perf_counter()
    longitudinal = longitudinal_study(encoder.transform(images), frame)
    seconds["longitudinal"] = time.perf_counter() - start

    name = "study_quick" if args.quick else "study"
    command = "python benchmarks/bench_study.py" + (" --quick" if args.quick else "")
    result = {
        "command": command,
        "mode": mode,
        "protocol": PROTOCOL,
        "subjects": int(frame.subject.nunique()),
        "scans": len(frame),
        "settings": settings,
        "cv": f"{settings['n_repeats']} x {settings['n_splits']}-fold subject-grouped stratified",
        "diagnosis": diagnosis["json"],
        "brain_age": brain_age["json"],
        "longitudinal": longitudinal["json"],
        "encoder_fit_seconds_per_stage": encoder.fit_seconds_,
        "seconds": seconds,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "load_average_at_start": load_at_start},
    }
    markdown = report(result, diagnosis, brain_age, longitudinal, f"{name}.png")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    write_atomically(OUTPUT / f"{name}.png", lambda path: diagnosis["figure"].savefig(path, dpi=110, format="png"))
    write_atomically(OUTPUT / f"{name}.json",
                     lambda path: path.write_text(json.dumps(result, indent=2) + "\n"))
    write_atomically(OUTPUT / f"{name}.md", lambda path: path.write_text(markdown))
    print(markdown)
    return 0


def diagnosis_study(features, columns, images, frame, cv, n_jobs):
    """AD vs CN scans, logistic-regression probes on every feature set."""
    scans = frame["diagnosis"].isin(["CN", "AD"]).to_numpy()
    is_ad = (frame["diagnosis"][scans] == "AD").to_numpy().astype(int)
    models = {name: _probe(columns[name], LogisticRegression(max_iter=2000), pca=name == VOXELS)
              for name in columns}
    study = run_study(models, images[scans], is_ad, groups=frame["subject"][scans].to_numpy(),
                      cv=cv, scoring=CLASSIFICATION_SCORING, n_jobs=n_jobs,
                      frozen_encoder=features)
    comparisons = compare_models(study, metric="roc_auc")
    figure = study.plot_roc()
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    summary = study.summary()
    return {
        "study": study, "comparisons": comparisons, "figure": figure, "legend": legend,
        "json": {
            "scans": int(scans.sum()),
            "summary": {model: {metric: {"mean": float(summary.loc[model, (metric, "mean")]),
                                         "sd": float(summary.loc[model, (metric, "sd")])}
                                for metric in study.metrics} for model in study.models},
            "comparisons_roc_auc": records(comparisons),
            "roc_subject_level_delong": legend,
        },
    }


def brain_age_study(features, columns, images, frame, cv, n_jobs):
    """Ridge brain age on every feature set, raw and bias-corrected, with the mean-age baseline."""
    groups = frame["subject"].to_numpy()
    age = frame["age"].to_numpy(dtype=float)

    def regressors(correction):
        return {name: BrainAgeRegressor(_probe(columns[name], RidgeCV(alphas=np.logspace(-3, 3, 13)),
                                               pca=name == VOXELS), correction=correction)
                for name in columns}

    with warnings.catch_warnings():
        # chance-level features warn in every fold; the report explains the consequence
        warnings.filterwarnings("ignore", message="BrainAgeRegressor: predicted age barely")
        raw = run_study({**regressors(None), "mean age": DummyRegressor()}, images, age,
                        groups=groups, cv=cv, scoring=REGRESSION_SCORING, n_jobs=n_jobs,
                        frozen_encoder=features)
        corrected = run_study(regressors("cole"), images, age, groups=groups, cv=cv,
                              scoring=REGRESSION_SCORING, n_jobs=n_jobs, frozen_encoder=features)
    comparisons = compare_models(raw, metric="mae")

    def out_of_fold(study, model):
        rows = study.predictions[study.predictions["model"] == model]
        return rows.set_index(["repeat", "row"]).sort_index()

    train_mean = out_of_fold(raw, "mean age")
    reports = {}
    for name in columns:
        uncorrected = out_of_fold(raw, name)
        reports[name] = brain_age_report(
            uncorrected["y_true"], uncorrected["y_pred"],
            y_train_mean=train_mean.loc[uncorrected.index, "y_pred"],
            corrected=out_of_fold(corrected, name).loc[uncorrected.index, "y_pred"],
        ).rename(index={"prediction": "uncorrected"})
    table = pd.concat(reports, names=["features"]).reset_index()
    return {
        "table": table, "comparisons": comparisons,
        "json": {"report_pooled_out_of_fold": records(table),
                 "comparisons_mae_uncorrected": records(comparisons)},
    }


def longitudinal_study(embeddings, frame):
    """Mixed models of every LDAE dimension, and of the true volumes as a positive control."""
    volumes = frame[["ventricle_volume", "hippocampus_volume", "grey_matter_volume"]]
    tables = {LDAE: fit_mixed_models(embeddings, frame),
              "true volumes": fit_mixed_models(volumes, frame)}
    faster_in_ad = {
        name: table[table["term"] == AD_TERM].sort_values("pvalue").reset_index(drop=True)
        for name, table in tables.items()
    }
    ldae = faster_in_ad[LDAE]
    return {
        "tables": faster_in_ad,
        "json": {
            "model": "value ~ time * diagnosis + baseline_age + sex; random intercept and slope "
                     "per subject; time in years since baseline; values standardised; "
                     "Benjamini-Hochberg across dimensions",
            "term": AD_TERM,
            "ldae_dimensions": len(ldae),
            "ldae_significant": int(ldae["significant"].sum()),
            "ldae_random_intercept_only": int((~ldae["random_slope"]).sum()),
            "ldae_top": records(ldae.head(10)),
            "true_volumes": records(faster_in_ad["true volumes"]),
        },
    }


def report(result, diagnosis, brain_age, longitudinal, figure_name):
    columns = ["dimension", "estimate", "ci_low", "ci_high", "pvalue", "pvalue_corrected",
               "random_slope"]
    comparison_columns = ["model_a", "model_b", "mean_difference", "statistic", "pvalue",
                          "pvalue_corrected"]
    lines = [
        f"# Study benchmark on the synthetic cohort ({result['subjects']} subjects, "
        f"{result['scans']} scans)", "",
        f"Command: `{result['command']}` ({result['mode']} mode, encoder preset "
        f"{result['settings']['preset']}; CV: {result['cv']}).", "",
        f"Protocol: {PROTOCOL}", "",
        f"## AD vs CN ({result['diagnosis']['scans']} scans), logistic-regression probes", "",
        diagnosis["study"].to_markdown(), "",
        "Pairwise corrected resampled t-tests on ROC-AUC (Nadeau & Bengio), Holm-corrected:", "",
        markdown_table(diagnosis["comparisons"][comparison_columns]), "",
        f"Out-of-fold ROC per subject (scores averaged over repeats and scans), DeLong 95% CI "
        f"(`{figure_name}`):", "",
        *[f"- {label}" for label in diagnosis["legend"]], "",
        "## Brain age (ridge, BrainAgeRegressor)", "",
        "Pooled out-of-fold predictions over all repeats. `corrected` is the Cole et al. (2018) "
        "correction, (raw - intercept) / slope, fitted on each training fold only (on inner "
        "5-fold out-of-fold predictions); accuracy is judged on `uncorrected`. The correction "
        "divides by the training bias slope: for features that carry little age signal (slope "
        "near 0, or negative) it amplifies the noise, which is what a huge corrected MAE shows.",
        "",
        markdown_table(brain_age["table"]), "",
        "Pairwise corrected resampled t-tests on the uncorrected MAE, Holm-corrected. The scores "
        "are negated MAE (greater is better): a negative difference means model_a errs more.", "",
        markdown_table(brain_age["comparisons"][comparison_columns]), "",
        "## Longitudinal: which dimensions change faster in AD", "",
        f"Model: {result['longitudinal']['model']}. Term `{AD_TERM}` (extra yearly change "
        "in AD over CN, in SD per year).", "",
        f"LDAE: {result['longitudinal']['ldae_significant']} of "
        f"{result['longitudinal']['ldae_dimensions']} dimensions significant at FDR 0.05 "
        f"({result['longitudinal']['ldae_random_intercept_only']} fitted with a random "
        "intercept only). Ten smallest p-values:", "",
        markdown_table(longitudinal["tables"][LDAE][columns].head(10)), "",
        "Positive control, the true volumes of the cohort:", "",
        markdown_table(longitudinal["tables"]["true volumes"][columns]), "",
        "## Run", "",
        "- seconds: " + ", ".join(f"{step} {value:.0f}" for step, value in result["seconds"].items()),
        "- encoder seconds per stage: " + ", ".join(
            f"{stage} {value:.0f}" for stage, value in result["encoder_fit_seconds_per_stage"].items()),
        f"- Python {result['machine']['python']}, torch {result['machine']['torch']}, "
        f"{result['machine']['threads']} torch threads, {result['machine']['cpus']} CPUs, "
        f"load average {result['machine']['load_average_at_start']} at start",
    ]
    return "\n".join(lines) + "\n"


def records(table):
    """A DataFrame as JSON-ready records (numpy scalars become plain Python values)."""
    return json.loads(table.to_json(orient="records"))


def write_atomically(path, write):
    """Call ``write(temporary_path)``, then move the file into place."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o644)  # mkstemp creates owner-only files
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


if __name__ == "__main__":
    sys.exit(main())
