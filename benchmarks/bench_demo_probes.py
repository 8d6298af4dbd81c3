"""The demo's own probe table over three seeds: does `ldae demo`'s budget show issue 18's point 3?

For each seed, exactly the fit of `ldae demo --random-state SEED` (its synthetic cohort of 60
subjects, the demo's preset and overrides, validation on 20 % of the subjects)
and of its untrained-encoder control, then the demo's linear probes (subject-grouped
stratified 5-fold CV): AD-vs-CN ROC-AUC and age MAE of LDAE, of the control and of the PCA
of the voxels. Reported per seed, then as mean and worst, with the fit seconds per stage
(the load average is recorded beside them).

    python benchmarks/bench_demo_probes.py                                # the demo's settings
    python benchmarks/bench_demo_probes.py --set representation_lr=0.002 --name lr2e-3 \\
        --checkpoints /tmp/demo-checkpoints                               # a stage-3 variant
    python benchmarks/bench_demo_probes.py --quick                        # 20 subjects, 1 seed

``--set NAME=VALUE`` overrides an LDAEEncoder parameter on top of the demo's, ``--subjects N``
the cohort's size; ``--checkpoints DIR`` keeps each seed's stage checkpoints, so that variants
of stage 3 reuse stages 1 and 2.
Writes docs/benchmarks/demo_probes[_quick][_NAME].json and .md.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from sklearn.base import clone

from ldae import LDAEEncoder
from ldae.datasets import make_synthetic_cohort
from ldae.demo import DEMO_SHAPE, FULL, QUICK
from ldae.model_selection import markdown_table
from ldae.probes import PCA_OF_VOXELS, probe_embeddings

from bench_model_quality import parse_setting, write_result

LDAE, UNTRAINED = "LDAE", "LDAE encoder untrained (control)"
FEATURES = {LDAE: "LDAE", UNTRAINED: "control", PCA_OF_VOXELS: "PCA"}


def run_seed(seed, settings, overrides, checkpoint_root):
    cohort = make_synthetic_cohort(settings["n_subjects"], shape=DEMO_SHAPE, random_state=seed)
    frame = cohort.frame
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        checkpoints = Path(checkpoint_root or scratch) / f"seed-{seed}"
        encoder = LDAEEncoder(preset=settings["preset"], random_state=seed, verbose=0,
                              checkpoint_dir=checkpoints, **{**settings["overrides"], **overrides})
        start = time.perf_counter()
        encoder.fit(cohort.images, groups=frame.subject)
        fit_seconds = time.perf_counter() - start
        control = clone(encoder).set_params(representation_epochs=0)
        control.fit(cohort.images, groups=frame.subject)
    probes = probe_embeddings({LDAE: encoder.transform(cohort.images),
                               UNTRAINED: control.transform(cohort.images)},
                              frame, voxels=cohort.images, random_state=seed)
    means = {study_name: study.scores.groupby("model")[metric].apply(lambda s: s.abs().mean())
             for study_name, study, metric in (("roc_auc", probes.diagnosis, "roc_auc"),
                                               ("age_mae", probes.age, "mae"))}
    return {"seed": seed, "fit_seconds": fit_seconds, "stage_seconds": encoder.fit_seconds_,
            "load_average": [load_before, os.getloadavg()[0]],
            **{metric: {FEATURES[name]: float(values[name]) for name in FEATURES}
               for metric, values in means.items()}}


def summarise(runs):
    def figures(run):
        auc, mae = run["roc_auc"], run["age_mae"]
        return {"AUC LDAE": auc["LDAE"], "AUC - control": auc["LDAE"] - auc["control"],
                "AUC - PCA": auc["LDAE"] - auc["PCA"], "MAE LDAE": mae["LDAE"],
                "control - MAE": mae["control"] - mae["LDAE"], "PCA - MAE": mae["PCA"] - mae["LDAE"],
                "fit s": run["fit_seconds"]}

    per_seed = [figures(run) for run in runs]
    worst = {name: (max if name in ("MAE LDAE", "fit s") else min)(f[name] for f in per_seed)
             for name in per_seed[0]}
    mean = {name: sum(f[name] for f in per_seed) / len(per_seed) for name in per_seed[0]}
    point_3 = all(f["AUC - control"] >= 0.05 and f["AUC - PCA"] >= 0 and f["control - MAE"] > 0
                  and f["PCA - MAE"] > 0 for f in per_seed)
    return {"mean": mean, "worst": worst, "point_3_on_every_seed": point_3}


def render(result):
    rows = [{"seed": run["seed"],
             **{f"AUC {short}": run["roc_auc"][short] for short in FEATURES.values()},
             **{f"MAE {short}": run["age_mae"][short] for short in FEATURES.values()},
             "fit s": run["fit_seconds"],
             **{f"{stage} s": seconds for stage, seconds in run["stage_seconds"].items()},
             "load": "–".join(f"{value:.1f}" for value in run["load_average"])}
            for run in result["runs"]]
    summary = result["summary"]
    lines = [
        "# The demo's own probe table over seeds", "",
        f"Command: `{result['command']}`", "",
        f"{result['subjects']} subjects per seed; the demo's settings "
        f"{result['demo_overrides']} plus {result['overrides'] or 'nothing'}. "
        f"{result['machine']['threads']} torch threads.", "",
        markdown_table(pd.DataFrame(rows)), "",
        "Mean and worst over the seeds (worst: the lowest difference, the highest MAE):", "",
        markdown_table(pd.DataFrame([{"": "mean", **summary["mean"]},
                                     {"": "worst", **summary["worst"]}])), "",
        "Issue 18 point 3 (LDAE ROC-AUC >= control + 0.05 and >= PCA, age MAE below both) on "
        f"every seed: **{summary['point_3_on_every_seed']}**.", "",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--name", default=None)
    parser.add_argument("--checkpoints", default=None, metavar="DIR")
    parser.add_argument("--subjects", type=int, default=None)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.subjects:
        settings = {**settings, "n_subjects": args.subjects}
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    overrides = dict(map(parse_setting, args.set))
    runs = []
    for seed in seeds:
        runs.append(run_seed(seed, settings, overrides, args.checkpoints))
        print(json.dumps(runs[-1], default=float), flush=True)
    command = "python benchmarks/bench_demo_probes.py" + "".join(
        (" --quick" if args.quick else "", *(f" --set {item}" for item in args.set),
         f" --name {args.name}" if args.name else "",
         f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds else "",
         f" --subjects {args.subjects}" if args.subjects else "",
         f" --checkpoints {args.checkpoints}" if args.checkpoints else ""))
    result = {"command": command, "subjects": settings["n_subjects"],
              "demo_overrides": settings["overrides"], "overrides": overrides, "runs": runs,
              "summary": summarise(runs),
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "cpu": platform.processor()}}
    write_result("demo_probes", args, result, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
