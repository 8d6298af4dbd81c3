"""CPU precision: bf16 autocast against fp32 (and torch.compile) for transform and a training step.

Fits an LDAEEncoder (one epoch per stage: speed only) and times, in fp32 and in
bf16 autocast, ``transform`` of a batch of scans and one training step of the
autoencoder and of the latent denoiser; the maximum absolute difference between
the fp32 and bf16 embeddings is reported against the embeddings' spread.
``--compile`` adds torch.compile of the denoiser (slow to compile on a CPU).
The recommendation for inference: bf16 where it is faster and the embeddings agree
within the tolerance (max |difference| < 5% of the embeddings' standard deviation),
else fp32.

Training: the same model is fitted twice on a synthetic cohort, every stage in fp32
and every stage in bf16 autocast, with validation on held-out subjects; the table
gives the seconds per stage, each stage's final validation loss, and the held-out
reconstruction SSIM of the autoencoder (evaluated in fp32).

    python benchmarks/bench_precision.py --quick    # 32x40x32, 4 scans; 20 subjects, quick-demo epochs
    python benchmarks/bench_precision.py            # 64x80x64, 16 scans; 60 subjects, small preset

Writes docs/benchmarks/precision[_quick].json and .md.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ldae import LDAEEncoder
from ldae._files import write_atomically
from ldae.datasets import make_synthetic_cohort
from ldae.demo import DEMO_SHAPE, FULL, QUICK
from ldae.diffusion import NoiseSchedule, diffusion_loss
from ldae.generation import autoencoder_reconstruction
from ldae.metrics import ssim
from ldae.training.device import autocast, has_native_bf16, resolve_precision

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
TOLERANCE = 0.05


def _timed(function, repeats):
    function()  # warm-up (oneDNN primitives, compilation)
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def _training_steps(model, scans, dtype, compiled):
    """Seconds of one autoencoder step and one denoiser step on a batch, at ``dtype``."""
    device = torch.device("cpu")
    volumes = torch.as_tensor(scans).unsqueeze(1)
    z0 = torch.as_tensor(model.encode_latent(scans))
    autoencoder = model.autoencoder_.train().requires_grad_(True)
    unet = model.unet_.train().requires_grad_(True)
    denoiser = torch.compile(unet) if compiled else unet
    schedule = NoiseSchedule()

    def autoencoder_step():
        with autocast(device, dtype):
            reconstruction, _, _ = autoencoder(volumes)
            loss = (reconstruction.float() - volumes).abs().mean()
        loss.backward()

    def denoiser_step():
        with autocast(device, dtype):
            loss = diffusion_loss(denoiser, z0, schedule, generator=torch.Generator().manual_seed(0))
        loss.backward()

    times = {"autoencoder step": None if compiled else _timed(autoencoder_step, 1),
             "denoiser step": _timed(denoiser_step, 1)}
    autoencoder.eval().requires_grad_(False)
    unet.eval().requires_grad_(False)
    return times


def _training_quality(quick):
    """Fit in fp32 and in bf16 on the same split; per-precision seconds and held-out scores."""
    settings = QUICK if quick else FULL
    cohort = make_synthetic_cohort(settings["n_subjects"], shape=DEMO_SHAPE, random_state=0)
    subjects = cohort.frame.subject.to_numpy()
    distinct = np.unique(subjects)
    held_out = np.isin(subjects, distinct[-max(2, len(distinct) // 10):])
    rows = {}
    for precision in ("fp32", "bf16"):
        model = LDAEEncoder(preset="small", precision=precision, random_state=0,
                            **settings["overrides"])
        model.fit(cohort.images[~held_out], groups=subjects[~held_out])
        reconstructions = autoencoder_reconstruction(model.set_params(precision="fp32"),
                                                     cohort.images[held_out])
        row = {f"{stage} (s)": seconds for stage, seconds in model.fit_seconds_.items()}
        row.update({f"{stage} val loss": history["val_loss"][-1]
                    for stage, history in model.history_.items()})
        row["held-out AE SSIM"] = float(ssim(reconstructions, cohort.images[held_out]).mean())
        rows[precision] = row
    return rows, int(held_out.sum()), int((~held_out).sum())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args(argv)
    shape, n_scans = ((32, 40, 32), 4) if args.quick else ((64, 80, 64), 16)
    scans = make_synthetic_cohort(3, shape=shape, random_state=0).images[:n_scans]
    model = LDAEEncoder(preset="small", image_shape=shape, ae_epochs=1, diffusion_epochs=1,
                        representation_epochs=1, precision="fp32", random_state=0).fit(scans)

    rows, embeddings = {}, {}
    for name, precision, dtype in (("fp32", "fp32", None), ("bf16", "bf16", torch.bfloat16)):
        model.set_params(precision=precision)
        embeddings[name] = model.transform(scans)
        rows[name] = {"transform (s per scan)": _timed(lambda: model.transform(scans), 1) / n_scans,
                      **_training_steps(model, scans[:model.config_.batch_size], dtype, False)}
    if args.compile:
        rows["fp32 + compile"] = {"transform (s per scan)": None,
                                  **_training_steps(model, scans[:model.config_.batch_size], None, True)}
    difference = float(np.abs(embeddings["bf16"] - embeddings["fp32"]).max())
    spread = float(embeddings["fp32"].std())
    speedup = rows["fp32"]["transform (s per scan)"] / rows["bf16"]["transform (s per scan)"]
    safe = difference < TOLERANCE * spread
    native = has_native_bf16()
    recommendation = "bf16" if speedup > 1 and safe else "fp32"
    cpu = torch.device("cpu")
    auto = {purpose: "bf16" if resolve_precision("auto", cpu, training=training) else "fp32"
            for purpose, training in (("training", True), ("inference", False))}
    training, n_held_out, n_train = _training_quality(args.quick)
    result = {
        "command": "python benchmarks/bench_precision.py" + (" --quick" if args.quick else "")
                   + (" --compile" if args.compile else ""),
        "shape": list(shape), "n_scans": n_scans, "seconds": rows,
        "bf16_speedup_transform": speedup, "max_abs_embedding_difference": difference,
        "embedding_std": spread, "tolerance": f"{TOLERANCE:.0%} of the embedding std",
        "within_tolerance": safe, "recommendation": recommendation, "auto": auto,
        "training": {"scans": n_train, "held_out_scans": n_held_out, "by_precision": training},
        "machine": {"processor": platform.processor(), "native_bf16": native,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "load_average": [round(x, 1) for x in os.getloadavg()]},
    }
    lines = [f"# CPU precision: bf16 autocast against fp32 ({'quick' if args.quick else 'full'})", "",
             f"Command: `{result['command']}`", "",
             f"{'×'.join(map(str, shape))}, {n_scans} scans, LDAEEncoder `small` architecture "
             f"(fitted 1 epoch per stage: speed only). CPU capability "
             f"{result['machine']['cpu_capability']}, native bf16: {native}, "
             f"{result['machine']['threads']} threads, load average {result['machine']['load_average']}.",
             "", "| precision | transform (s/scan) | autoencoder step (s) | denoiser step (s) |",
             "|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join("—" if v is None else f"{v:.3g}" for v in row.values()) + " |")
    lines += ["", f"bf16 speed-up of transform: {speedup:.2f}×; max |bf16 − fp32| embedding "
              f"difference {difference:.3g} against an embedding std of {spread:.3g} "
              f"(tolerance {TOLERANCE:.0%}: {'within' if safe else 'outside'}).", "",
              f"Recommended for inference on this machine: **{recommendation}**.", "",
              f"## Training in fp32 and in bf16 ({n_train} scans, validation and SSIM on "
              f"{n_held_out} scans of held-out subjects)", "",
              "| precision | " + " | ".join(training["fp32"]) + " |",
              "|---|" + "---|" * len(training["fp32"])]
    for name, row in training.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.4g}" for v in row.values()) + " |")
    lines += ["", f"`precision=\"auto\"` on this machine: {auto['training']} for training, "
              f"{auto['inference']} for inference (bf16 training needs native bf16; CPU inference "
              "is always fp32; GPUs use bf16)."]
    markdown = "\n".join(lines)
    name = "precision_quick" if args.quick else "precision"
    for suffix, text in ((".json", json.dumps(result, indent=2) + "\n"), (".md", markdown + "\n")):
        write_atomically(OUTPUT / f"{name}{suffix}", lambda temporary: temporary.write_text(text))
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
