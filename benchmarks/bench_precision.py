"""CPU precision: bf16 autocast against fp32 (and torch.compile) for transform and a training step.

Speed: fits an LDAEEncoder (one epoch per stage: speed only) and times ``transform`` of a
batch of scans at each inference precision (``fp32``; ``auto``, which on a CPU with native
bf16 encodes scans with the autoencoder in bf16 and computes the rest in fp32; ``bf16``),
and one training step of the autoencoder and of the latent denoiser. ``--compile`` adds
torch.compile of the denoiser (slow to compile on a CPU).

Tolerance: the maximum absolute difference between each precision's embeddings and the
fp32 ones, against the fp32 embeddings' standard deviation (5 %), on the 1-epoch model
and on the fp32-trained model of the training section (an untrained code's spread across
scans is tiny against its rounding: only a trained model judges a precision).

Sampling: ``reconstruct`` of the trained model's held-out scans at 20 DDIM steps per
precision (``auto`` runs the DDIM steps and the decoding in fp32, ``bf16`` in bf16):
seconds, SSIM to the scans (tolerance: within 0.005 of fp32's), the lowest SSIM and the
largest difference to the fp32 reconstruction, and how well the change ``manipulate``
makes (two SDs along a fixed random direction of the embedding) keeps its shape: the
lowest cosine between each scan's change and its fp32 change.

Reading: ``transform`` of gzipped NIfTI files at 128x160x128 (the paper's grid, `small`
architecture, untrained) against nibabel decoding + preprocessing of the same files, and
``reconstruct`` of one of them at 4 DDIM steps per precision.

Training: the same model is fitted twice on a synthetic cohort, every stage in fp32
and every stage in bf16 autocast, with validation on held-out subjects; the table
gives the seconds per stage, each stage's final validation loss, and the held-out
reconstruction SSIM of the autoencoder (evaluated in fp32).

    python benchmarks/bench_precision.py --quick    # 32x40x32, 4 scans; 20 subjects, quick-demo epochs; 3 files
    python benchmarks/bench_precision.py            # 64x80x64, 16 scans; 60 subjects, demo epochs; 12 files

Writes docs/benchmarks/precision[_quick].json and .md.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from sklearn.metrics.pairwise import paired_cosine_distances

from ldae import LDAEEncoder
from ldae._files import write_atomically
from ldae.datasets import make_synthetic_cohort
from ldae.demo import DEMO_SHAPE, FULL, QUICK
from ldae.diffusion import NoiseSchedule, diffusion_loss
from ldae.generation import autoencoder_reconstruction
from ldae.imaging import as_volume_dataset
from ldae.metrics import ssim
from ldae.training.device import PURPOSES, autocast, has_native_bf16, resolve_precision

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
TOLERANCE = 0.05
INFERENCE_PRECISIONS = ("fp32", "auto", "bf16")
FILES_SHAPE = (128, 160, 128)
SAMPLING_STEPS = 20
FILES_SAMPLING_STEPS = 4
SAMPLING_TOLERANCE = 0.005  # |SSIM to the scans - fp32's SSIM to the scans|


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
    """Fit in fp32 and in bf16 on the same split; per-precision seconds, held-out scores, and
    the fp32-trained model with its held-out scans (for the inference tolerance)."""
    settings = QUICK if quick else FULL
    cohort = make_synthetic_cohort(settings["n_subjects"], shape=DEMO_SHAPE, random_state=0)
    subjects = cohort.frame.subject.to_numpy()
    distinct = np.unique(subjects)
    held_out = np.isin(subjects, distinct[-max(2, len(distinct) // 10):])
    rows, models = {}, {}
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
        rows[precision], models[precision] = row, model
    return rows, models["fp32"], cohort.images[held_out], int((~held_out).sum())


def _embedding_differences(model, scans):
    """Max |embedding - fp32 embedding| / the fp32 embeddings' std, per inference precision."""
    embeddings = {precision: model.set_params(precision=precision).transform(scans)
                  for precision in INFERENCE_PRECISIONS}
    spread = float(embeddings["fp32"].std())
    return {precision: float(np.abs(values - embeddings["fp32"]).max()) / spread
            for precision, values in embeddings.items() if precision != "fp32"}


def _sampling_differences(model, scans):
    """Per inference precision: seconds per scan of ``reconstruct`` at SAMPLING_STEPS DDIM
    steps, its SSIM to the scans, and its differences from the fp32 reconstruction."""
    volumes, rows = {}, {}
    for precision in INFERENCE_PRECISIONS:
        model.set_params(precision=precision)
        model.reconstruct(scans[:1], steps=1)  # warm-up
        start = time.perf_counter()
        volumes[precision] = model.reconstruct(scans, steps=SAMPLING_STEPS)
        rows[precision] = {"reconstruct (s per scan)": (time.perf_counter() - start) / len(scans),
                           "SSIM to the scans": float(ssim(volumes[precision], scans).mean())}
    edits = _manipulation_edits(model, scans)
    for precision, row in rows.items():
        row["lowest SSIM to fp32's"] = float(ssim(volumes[precision], volumes["fp32"]).min())
        row["max |difference| from fp32's"] = float(np.abs(volumes[precision] - volumes["fp32"]).max())
        cosines = 1.0 - paired_cosine_distances(edits[precision], edits["fp32"])
        row["edit cosine to fp32's (lowest)"] = float(cosines.min())
    return rows


def _manipulation_edits(model, scans):
    """Per inference precision, the change ``manipulate`` makes to each scan moving it two
    SDs of the embeddings along a fixed random direction, flattened (n_scans, voxels)."""
    direction = np.random.default_rng(0).standard_normal(model.config_.embedding_dim)
    direction /= np.linalg.norm(direction)
    edits = {}
    for precision in INFERENCE_PRECISIONS:
        model.set_params(precision=precision)
        spread = float(np.std(model.transform(scans) @ direction))
        moved = model.manipulate(scans, direction, [0.0, 2 * spread], steps=SAMPLING_STEPS)
        edits[precision] = (moved[1] - moved[0]).reshape(len(scans), -1)
    return edits


def _files_against_decoding(shape, n_files, scratch):
    """Seconds per scan of nibabel decoding + preprocessing of gzipped NIfTI files at
    ``shape`` and of ``transform`` on the same paths, per inference precision (untrained
    networks of the `small` architecture: speed does not depend on training)."""
    cohort = make_synthetic_cohort(max(1, n_files // 3), shape=shape, random_state=0)
    paths = []
    for i in range(n_files):
        path = Path(scratch) / f"scan_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(cohort.images[i % len(cohort.images)], cohort.affine), path)
        paths.append(str(path))
    model = LDAEEncoder(preset="small", image_shape=shape, ae_epochs=0, diffusion_epochs=0,
                        representation_epochs=0, validation_fraction=0,
                        random_state=0).fit(cohort.images[:1])
    dataset = as_volume_dataset(paths, model.preprocessing_)
    seconds = {"nibabel decode + preprocessing": _timed(
        lambda: [dataset[i] for i in range(len(dataset))], 1) / n_files}
    for precision in INFERENCE_PRECISIONS:
        model.set_params(precision=precision)
        seconds[f"transform, {precision}"] = _timed(lambda: model.transform(paths), 1) / n_files
    model.set_params(precision="auto", num_workers=1)
    seconds["transform, auto, 1 loader worker"] = _timed(lambda: model.transform(paths), 1) / n_files
    model.set_params(num_workers=0)
    for precision in INFERENCE_PRECISIONS:
        model.set_params(precision=precision)
        model.reconstruct(paths[:1], steps=1)  # warm-up
        start = time.perf_counter()
        model.reconstruct(paths[:1], steps=FILES_SAMPLING_STEPS)
        seconds[f"reconstruct ({FILES_SAMPLING_STEPS} steps), {precision}"] = time.perf_counter() - start
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args(argv)
    shape, n_scans = ((32, 40, 32), 4) if args.quick else ((64, 80, 64), 16)
    scans = make_synthetic_cohort(3, shape=shape, random_state=0).images[:n_scans]
    model = LDAEEncoder(preset="small", image_shape=shape, ae_epochs=1, diffusion_epochs=1,
                        representation_epochs=1, precision="fp32", random_state=0).fit(scans)

    rows = {}
    for precision in INFERENCE_PRECISIONS:
        model.set_params(precision=precision)
        dtype = resolve_precision(precision, torch.device("cpu"), "training")
        rows[precision] = {"transform (s per scan)": _timed(lambda: model.transform(scans), 5) / n_scans,
                           **_training_steps(model, scans[:model.config_.batch_size], dtype, False)}
    if args.compile:
        rows["fp32 + compile"] = {"transform (s per scan)": None,
                                  **_training_steps(model, scans[:model.config_.batch_size], None, True)}
    untrained = _embedding_differences(model, scans)
    training, trained_model, held_out_scans, n_train = _training_quality(args.quick)
    trained = _embedding_differences(trained_model, held_out_scans)
    sampling = _sampling_differences(trained_model, held_out_scans)
    speedups = {precision: rows["fp32"]["transform (s per scan)"] / rows[precision]["transform (s per scan)"]
                for precision in INFERENCE_PRECISIONS}
    with tempfile.TemporaryDirectory() as scratch:
        files = _files_against_decoding(FILES_SHAPE, 3 if args.quick else 12, scratch)
    native = has_native_bf16()
    cpu = torch.device("cpu")
    auto = {purpose: "bf16" if resolve_precision("auto", cpu, purpose) else "fp32"
            for purpose in PURPOSES}
    result = {
        "command": "python benchmarks/bench_precision.py" + (" --quick" if args.quick else "")
                   + (" --compile" if args.compile else ""),
        "shape": list(shape), "n_scans": n_scans, "seconds": rows, "transform_speedup": speedups,
        "embedding_difference_over_std": {"untrained (1 epoch)": untrained, "trained": trained},
        "tolerance": TOLERANCE, "sampling_steps": SAMPLING_STEPS, "sampling": sampling,
        "sampling_tolerance": SAMPLING_TOLERANCE, "auto": auto, "files_shape": list(FILES_SHAPE),
        "files_seconds_per_scan": files,
        "training": {"scans": n_train, "held_out_scans": len(held_out_scans), "by_precision": training},
        "machine": {"processor": platform.processor(), "native_bf16": native,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "load_average": [round(x, 1) for x in os.getloadavg()]},
    }
    markdown = _markdown(result, args.quick)
    name = "precision_quick" if args.quick else "precision"
    for suffix, text in ((".json", json.dumps(result, indent=2) + "\n"), (".md", markdown + "\n")):
        write_atomically(OUTPUT / f"{name}{suffix}", lambda temporary: temporary.write_text(text))
    print(markdown)
    return 0


def _markdown(result, quick):
    rows, differences, training = (result["seconds"], result["embedding_difference_over_std"],
                                   result["training"]["by_precision"])
    machine = result["machine"]
    lines = [f"# CPU precision: bf16 autocast against fp32 ({'quick' if quick else 'full'})", "",
             f"Command: `{result['command']}`", "",
             f"CPU capability {machine['cpu_capability']}, native bf16: {machine['native_bf16']}, "
             f"{machine['threads']} threads, load average {machine['load_average']}. Inference "
             "precisions: `fp32` everywhere; `auto` on this machine (the autoencoder's encoding in "
             f"{result['auto']['encoding']}, the semantic encoder in {result['auto']['embedding']}, "
             f"DDIM steps and decoding in {result['auto']['sampling']}, the latents a fit caches in "
             f"{result['auto']['caching']}); `bf16` everywhere.", "",
             f"## Speed ({'×'.join(map(str, result['shape']))}, {result['n_scans']} scans, `small` "
             "architecture fitted 1 epoch per stage: speed only)", "",
             "| precision | transform (s/scan) | transform speed-up (×) | autoencoder step (s) | "
             "denoiser step (s) |", "|---|---|---|---|---|"]
    for name, row in rows.items():
        values = [row["transform (s per scan)"], result["transform_speedup"].get(name),
                  row["autoencoder step"], row["denoiser step"]]
        lines.append(f"| {name} | " + " | ".join("—" if v is None else f"{v:.3g}" for v in values) + " |")
    lines += ["", f"## Embeddings against fp32 (max |difference| / the fp32 embeddings' std; "
              f"tolerance {result['tolerance']:.0%})", "",
              "| model | " + " | ".join(differences["trained"]) + " |",
              "|---|" + "---|" * len(differences["trained"])]
    for model, values in differences.items():
        lines.append(f"| {model} | " + " | ".join(
            f"{value:.2%} ({'within' if value < result['tolerance'] else 'outside'})"
            for value in values.values()) + " |")
    lines += ["", f"The trained model: the fp32 fit of the training section below, on its "
              f"{result['training']['held_out_scans']} held-out scans. An untrained code's spread "
              "across scans is tiny against its rounding, so only the trained model judges a "
              "precision.", "",
              f"## Reconstruction against fp32 (the trained model, {SAMPLING_STEPS} DDIM steps; "
              f"tolerance: SSIM to the scans within {result['sampling_tolerance']} of fp32's)", "",
              "| precision | " + " | ".join(result["sampling"]["fp32"]) + " | speed-up (×) | within |",
              "|---|" + "---|" * (len(result["sampling"]["fp32"]) + 2)]
    sampling = result["sampling"]
    for name, row in sampling.items():
        speedup = sampling["fp32"]["reconstruct (s per scan)"] / row["reconstruct (s per scan)"]
        within = abs(row["SSIM to the scans"] - sampling["fp32"]["SSIM to the scans"]) \
            < result["sampling_tolerance"]
        lines.append(f"| {name} | " + " | ".join(f"{v:.4g}" for v in row.values())
                     + f" | {speedup:.3g} | {within} |")
    lines += ["", f"## `transform` and `reconstruct` on gzipped NIfTI files at {'×'.join(map(str, result['files_shape']))} "
              "against reading them (`small` architecture, untrained)", "",
              "| step | s per scan | scans/s | / nibabel decode + preprocessing |", "|---|---|---|---|"]
    files = result["files_seconds_per_scan"]
    reading = files["nibabel decode + preprocessing"]
    reconstruct = {step: seconds for step, seconds in files.items() if step.startswith("reconstruct")}
    for step, seconds in files.items():
        if step not in reconstruct:
            lines.append(f"| {step} | {seconds:.3g} | {1 / seconds:.3g} | {reading / seconds:.3g} |")
    fp32 = reconstruct[f"reconstruct ({FILES_SAMPLING_STEPS} steps), fp32"]
    lines += ["", f"One file reconstructed at {FILES_SAMPLING_STEPS} DDIM steps:", "",
              "| step | s per scan | speed-up over fp32 (×) |", "|---|---|---|"]
    lines += [f"| {step} | {seconds:.3g} | {fp32 / seconds:.3g} |" for step, seconds in reconstruct.items()]
    lines += ["", f"## Training in fp32 and in bf16 ({result['training']['scans']} scans, validation "
              f"and SSIM on {result['training']['held_out_scans']} scans of held-out subjects)", "",
              "| precision | " + " | ".join(training["fp32"]) + " |",
              "|---|" + "---|" * len(training["fp32"])]
    for name, row in training.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.4g}" for v in row.values()) + " |")
    lines += ["", "`precision=\"auto\"` on this machine: " + ", ".join(
        f"{dtype} for {purpose}" for purpose, dtype in result["auto"].items()) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
