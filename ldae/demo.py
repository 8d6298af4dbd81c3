"""The demo study: synthetic cohort -> fit -> embed -> probe -> compare -> report."""

import platform
import time
from pathlib import Path

import numpy as np

from . import __version__
from .datasets import make_synthetic_cohort
from .encoder import LDAEEncoder
from .model_selection import markdown_table
from .probes import probe_embeddings

DEMO_SHAPE = (32, 40, 32)
FULL = dict(n_subjects=60, overrides={})
# --quick trains half the epochs on a third of the subjects: a smoke run of the
# whole path, not a result.
QUICK = dict(n_subjects=20, overrides=dict(ae_epochs=5, diffusion_epochs=15, representation_epochs=15))


def run_demo(output_dir="ldae-demo", *, quick=False, n_subjects=None, random_state=0, verbose=1):
    """Run the whole LDAE study on a synthetic cohort and write a report.

    Parameters
    ----------
    output_dir : str or Path, default="ldae-demo"
        Folder receiving ``report.md``.
    quick : bool, default=False
        Fewer subjects and epochs (a smoke run in under two minutes).
    n_subjects : int, optional
        Overrides the number of synthetic subjects.
    random_state : int, default=0
        Seed of the cohort, the model and the folds.
    verbose : int, default=1
        0 silent, 1 progress messages and bars.

    Returns
    -------
    dict
        ``cohort``, ``encoder``, ``probes`` (ProbeResults), ``report`` (path).
    """
    settings = QUICK if quick else FULL
    say = print if verbose else (lambda *args, **kwargs: None)
    timings = {}

    start = time.perf_counter()
    cohort = make_synthetic_cohort(n_subjects or settings["n_subjects"], shape=DEMO_SHAPE,
                                   random_state=random_state)
    frame = cohort.frame
    timings["cohort"] = time.perf_counter() - start
    say(f"cohort: {len(frame)} scans of {frame.subject.nunique()} subjects "
        f"({_counts(frame.diagnosis)}) in {timings['cohort']:.1f} s")

    start = time.perf_counter()
    encoder = LDAEEncoder(preset="small", random_state=random_state, verbose=verbose,
                          **settings["overrides"])
    encoder.fit(cohort.images, groups=frame.subject)
    timings["fit"] = time.perf_counter() - start
    say(f"fit: {timings['fit']:.1f} s (" + ", ".join(
        f"{stage} {seconds:.0f} s" for stage, seconds in encoder.fit_seconds_.items()) + ")")

    start = time.perf_counter()
    embeddings = encoder.transform(cohort.images)
    pooled_latents = encoder.encode_latent(cohort.images).mean(axis=(2, 3, 4))
    timings["embed"] = time.perf_counter() - start

    start = time.perf_counter()
    probes = probe_embeddings(
        {"LDAE": embeddings, "AE latent (mean-pooled)": pooled_latents}, frame,
        voxels=cohort.images, random_state=random_state,
    )
    timings["probes"] = time.perf_counter() - start
    table, comparisons = probes.table(), probes.comparisons("LDAE")
    say("\nLinear probes, subject-grouped 5-fold CV (mean ± sd over folds)\n")
    say(table.to_string())
    say("\nLDAE against the others (corrected resampled t-test, Holm)\n")
    say(comparisons[["metric", "model_a", "model_b", "mean_difference", "pvalue",
                     "pvalue_corrected"]].to_string(index=False))

    report = _write_report(Path(output_dir), cohort, encoder, table, comparisons, timings, quick)
    say(f"\nreport: {report.resolve()}")
    return {"cohort": cohort, "encoder": encoder, "probes": probes, "report": report}


def _counts(values):
    return ", ".join(f"{count} {name}" for name, count in values.value_counts().items())


def _write_report(folder, cohort, encoder, table, comparisons, timings, quick):
    frame = cohort.frame
    lines = [
        "# ldae demo report", "",
        f"Synthetic cohort: {len(frame)} scans of {frame.subject.nunique()} subjects "
        f"({_counts(frame.drop_duplicates('subject').baseline_diagnosis)} at baseline), "
        f"grid {DEMO_SHAPE}.", "",
        "## Linear probes", "",
        "Subject-grouped stratified 5-fold cross-validation; the encoder was trained once, "
        "without labels, on every scan (a transductive representation).", "",
        markdown_table(table.reset_index(names="features")), "",
        "## LDAE against the baselines", "",
        "Corrected resampled t-test (Nadeau & Bengio) on the per-fold scores, Holm-corrected.", "",
        markdown_table(comparisons), "",
        "## Run", "",
        f"- mode: {'quick' if quick else 'full'}; preset small; "
        f"embedding size {encoder.config_.embedding_dim}",
        "- seconds: " + ", ".join(f"{step} {value:.1f}" for step, value in timings.items()),
        "- seconds per stage: " + ", ".join(
            f"{stage} {value:.1f}" for stage, value in encoder.fit_seconds_.items()),
        f"- ldae {__version__}, Python {platform.python_version()}, numpy {np.__version__}",
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "report.md"
    temporary = path.with_name(".report.md.tmp")
    temporary.write_text("\n".join(lines) + "\n")
    temporary.replace(path)
    return path
