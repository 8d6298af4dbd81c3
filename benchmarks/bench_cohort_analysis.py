"""Cohort analysis on the synthetic cohort: quality control, similar scans, site effects.

Fits an LDAEEncoder on a clean synthetic cohort, then reports

- quality control: corrupted copies of cohort scans (a zipper artefact, an
  upside-down scan, an inverted T2-like contrast, pure noise, and a left-right flip
  as a known blind spot) are mixed in; the outlier score of each (the distance of
  its LDAE embedding or of its stage-1 latent statistics, and its autoencoder
  reconstruction error, as robust z-scores), and whether every corrupted scan
  ranks above every clean one;
- retrieval: Recall@k of a scan's own other visits among its k nearest scans;
- site effects: subject-grouped balanced accuracy of predicting the site, before
  and after harmonisation within training folds, against chance;

for the LDAE embedding, the mean-pooled stage-1 latent, the PCA of the voxels and
(site only) brain-intensity deciles, a representation known to carry the site
contrast. Also draws the LDAE cohort map.

    python benchmarks/bench_cohort_analysis.py --quick   # 16 subjects, tiny preset
    python benchmarks/bench_cohort_analysis.py           # 60 subjects, small preset

Writes docs/benchmarks/cohort_analysis[_quick].json, .md and .png.
"""

import argparse
import json
import platform
import sys
import time
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA

from ldae import LDAEEncoder
from ldae._files import write_atomically
from ldae.cohort_map import cohort_map, plot_cohort_map
from ldae.datasets import make_synthetic_cohort
from ldae.model_selection import markdown_table
from ldae.quality_control import (CORRUPTIONS, QualityControl, latent_statistics, reconstruction_error,
                                  simulate_corruptions)
from ldae.retrieval import SimilarScans, recall_at_k
from ldae.site_effects import site_prediction_score

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
SHAPE = (32, 40, 32)
QUICK = dict(subjects=16, visit_months=(0, 6, 12, 24), preset="tiny", folds=3, corrupted_per_kind=1)
FULL = dict(subjects=60, visit_months=(0, 6, 12, 24, 36), preset="small", folds=5, corrupted_per_kind=2)
BLIND_SPOT = "left-right"
KS = (1, 5)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--random-state", type=int, default=0)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    seed = args.random_state
    seconds = {}

    start = time.perf_counter()
    cohort = make_synthetic_cohort(settings["subjects"], shape=SHAPE, visit_months=settings["visit_months"],
                                   random_state=seed)
    frame, images = cohort.frame, cohort.images
    seconds["cohort"] = time.perf_counter() - start
    start = time.perf_counter()
    encoder = LDAEEncoder(preset=settings["preset"], random_state=seed).fit(images, groups=frame.subject)
    seconds["fit"] = time.perf_counter() - start

    start = time.perf_counter()
    features = {
        "LDAE": encoder.transform(images),
        "AE latent (mean-pooled)": encoder.encode_latent(images).mean(axis=(2, 3, 4)),
        "PCA of voxels": PCA(n_components=20, random_state=seed).fit_transform(images.reshape(len(frame), -1)),
    }
    seconds["embed"] = time.perf_counter() - start

    start = time.perf_counter()
    quality = quality_control(encoder, images, frame, features["LDAE"], settings["corrupted_per_kind"], seed)
    seconds["quality_control"] = time.perf_counter() - start
    retrieval = {name: {f"recall@{k}": recall_at_k(values, frame.subject, k=k) for k in KS}
                 for name, values in features.items()}
    example = example_query(features["LDAE"], frame)
    site_features = {**features, "brain intensity deciles": intensity_deciles(images)}
    sites = {name: site_prediction_score(values, frame.site, frame.subject, cv=settings["folds"],
                                         random_state=seed).table()
             for name, values in site_features.items()}

    name = "cohort_analysis_quick" if args.quick else "cohort_analysis"
    OUTPUT.mkdir(parents=True, exist_ok=True)
    mapped = cohort_map(features["LDAE"], frame, random_state=seed)
    plot_cohort_map(mapped, color="diagnosis", path=OUTPUT / f"{name}.png")

    result = {
        "command": "python benchmarks/bench_cohort_analysis.py" + (" --quick" if args.quick else ""),
        "subjects": int(frame.subject.nunique()),
        "scans": len(frame),
        "preset": settings["preset"],
        "seconds": seconds,
        "fit_seconds_per_stage": encoder.fit_seconds_,
        "quality_control": quality,
        "retrieval": retrieval,
        "retrieval_example": example.to_dict(orient="records"),
        "site_prediction": {feature: table.to_dict(orient="records") for feature, table in sites.items()},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
    }
    write_atomically(OUTPUT / f"{name}.json", lambda temporary: temporary.write_text(
        json.dumps(result, indent=2, default=str) + "\n"))
    markdown = report(result, quality, retrieval, example, sites, name)
    write_atomically(OUTPUT / f"{name}.md", lambda temporary: temporary.write_text(markdown))
    print(markdown)
    return 0


def quality_control(encoder, images, cohort_frame, clean_embeddings, per_kind, seed):
    """Score the clean scans mixed with corrupted copies of some of them."""
    kinds = [kind for kind in (*CORRUPTIONS, BLIND_SPOT) for _ in range(per_kind)]
    sources = np.linspace(0, len(images) - 1, len(kinds)).astype(int)
    corrupted = simulate_corruptions(images[sources], kinds, random_state=seed)
    mix = np.concatenate([images, corrupted])
    representations = {
        "LDAE embedding": np.concatenate([clean_embeddings, encoder.transform(corrupted)]),
        "latent statistics": latent_statistics(encoder, mix),
    }
    errors = reconstruction_error(encoder, mix)
    frame = pd.DataFrame({"truth": ["clean"] * len(images) + kinds,
                          "site": np.concatenate([cohort_frame.site, cohort_frame.site.iloc[sources]]),
                          "reconstruction_error": errors})

    outcome = {}
    for representation, method, by_site in product(representations, ("mahalanobis", "isolation_forest"),
                                                   (False, True)):
        X, site = representations[representation], frame.site if by_site else None
        qc = QualityControl(method=method, random_state=seed).fit(X, reconstruction_error=errors, site=site)
        table = qc.score_table(X, errors, site, frame=frame)
        clean = table[table.truth == "clean"]
        caught = table[table.truth.isin(CORRUPTIONS)]
        outcome[f"{representation}, {method}{', by site' if by_site else ''}"] = {
            "representation": representation,
            "method": method,
            "by_site": by_site,
            "clean_max": clean.drop(columns=["truth", "site", "flagged"]).max().round(4).to_dict(),
            "clean_flagged_by_site": clean[clean.flagged].site.value_counts().to_dict(),
            "clean_median_outlier_score": round(float(clean.outlier_score.median()), 4),
            "all_corrupted_above_every_clean": bool(caught.outlier_score.min() > clean.outlier_score.max()),
            "margin": round(float(caught.outlier_score.min() - clean.outlier_score.max()), 4),
            "corrupted_flagged": int(caught.flagged.sum()),
            "n_corrupted": int(len(caught)),
            "clean_flagged": int(clean.flagged.sum()),
            "n_clean": int(len(clean)),
            "threshold": qc.threshold,
            "table": table.round(4).to_dict(orient="records"),
        }
    return outcome


def example_query(embeddings, frame, k=5):
    """The k scans nearest to the first scan of a subject with several visits."""
    ids = frame_ids(frame)
    index = SimilarScans(n_neighbors=k).fit(embeddings, subjects=frame.subject, index=ids)
    query = ids[np.flatnonzero(frame.subject.duplicated(keep=False).to_numpy())[0]]
    found = index.query()  # every indexed scan, itself left out
    return found[found["query"] == query].reset_index(drop=True)


def frame_ids(frame):
    return (frame.subject + "_" + frame.session).to_numpy()


def intensity_deciles(images):
    brain = [volume[volume > 0.02] for volume in images.reshape(len(images), -1)]
    return np.stack([np.quantile(voxels, np.linspace(0.1, 0.9, 9)) for voxels in brain])


def report(result, quality, retrieval, example, sites, name):
    lines = [
        f"# Cohort analysis on the synthetic cohort ({result['subjects']} subjects, "
        f"{result['scans']} scans, preset {result['preset']})", "",
        f"Command: `{result['command']}`", "",
        "## Quality control", "",
        "Clean scans plus corrupted copies; QualityControl fitted on the whole mix (it does not "
        "know which scans are corrupted), on the LDAE embedding or on the latent statistics "
        "(per-channel mean and sd of the stage-1 latent), each with the reconstruction error, "
        "pooled or comparing each scan with its own site. Scores are robust z-scores; the outlier "
        "score is the larger of the two. The left-right flip is reported but not counted: the "
        "synthetic brains are nearly symmetric.", "",
        markdown_table(pd.DataFrame([
            {"representation": outcome["representation"], "method": outcome["method"],
             "by site": outcome["by_site"],
             "all corrupted above every clean": outcome["all_corrupted_above_every_clean"],
             "margin": outcome["margin"],
             "corrupted flagged": f"{outcome['corrupted_flagged']}/{outcome['n_corrupted']}",
             "clean flagged": f"{outcome['clean_flagged']}/{outcome['n_clean']}"}
            for outcome in quality.values()]), digits=3), "",
        "Scores of the corrupted scans against the highest clean score (z > "
        f"{next(iter(quality.values()))['threshold']} is flagged):", "",
    ]
    for name, outcome in quality.items():
        if not (outcome["method"] == "mahalanobis" and outcome["by_site"]):
            continue
        table = pd.DataFrame(outcome["table"])
        clean_max = pd.DataFrame([{"truth": "clean (max)", **outcome["clean_max"]}])
        shown = pd.concat([table[table.truth != "clean"], clean_max], ignore_index=True)
        lines += [f"### {name}", "", markdown_table(shown.drop(columns=["site", "flagged"]), digits=3), ""]
    recall = pd.DataFrame(retrieval).T.reset_index(names="features")
    lines += [
        "## Similar-scan retrieval", "",
        "Recall@k: share of scans with another visit that find one among their k nearest scans "
        "(cosine distance on standardised features).", "",
        markdown_table(recall, digits=3), "",
        f"Example: the 5 scans nearest to {example['query'].iloc[0]} (LDAE embedding):", "",
        markdown_table(example[["rank", "neighbour", "subject", "distance"]], digits=3), "",
        "## Site prediction", "",
        "Balanced accuracy of a logistic regression predicting the site, subject-grouped "
        "stratified CV; the harmoniser is fitted inside each training fold.", "",
        markdown_table(pd.concat([table.assign(representation=feature) for feature, table in sites.items()])
                       [["representation", "features", "balanced_accuracy", "sd", "chance"]], digits=3), "",
        f"Cohort map of the LDAE embedding: `{name}.png`.", "",
        "Seconds: " + ", ".join(f"{step} {value:.0f}" for step, value in result["seconds"].items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
