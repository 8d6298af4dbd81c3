"""Inference cost: LDAE against a voxel-space diffusion autoencoder with the same denoiser.

The voxel DAE (``VoxelDAEEncoder(preset="<architecture>-ldae-unet")``) denoises the
volume with exactly the latent UNet architecture of LDAE's preset (widths, residual
blocks, attention levels, heads; one image channel instead of the latent's), as a
DiffAE in image space built from the same UNet: the two differ only in where the
denoiser works. Parameter counts are printed beside the figures.

Inference is a fixed sequence of network calls, so for each grid and architecture
every call is timed alone (median of up to 3 calls after a warm-up call)
and its FLOPs counted (torch.utils.flop_counter), and the seconds per scan of each
public method at S DDIM steps follow from them:

    LDAE       transform          = preprocessing + [AE encode] + semantic encoder
               encode_stochastic  = preprocessing + AE encode + semantic encoder + S x step
               reconstruct        = encode_stochastic + S x step + AE decode
    voxel DAE  transform          = preprocessing + semantic encoder
               encode_stochastic  = transform + S x step
               reconstruct        = encode_stochastic + S x step

(an LDAE step is the frozen UNet with the gradient estimator, a voxel-DAE step the
conditional UNet; "AE encode" is in LDAE's transform when its semantic encoder reads
the latent). The composition is checked against the public methods timed end to end
where they take less than --max-seconds. A call that would take longer than
--max-seconds is not run: its FLOPs are counted on the meta device and its time is
estimated at the FLOP rate of the LDAE step of the same architecture in this run
(marked "est.").

For the `small` architecture, a DDIM decode loop of 10 LDAE steps is also timed against
10 × one step at 1 to 16 scans per call: whether the loop adds cost beyond its network
calls, and what batching scans buys (the library samples 2 × batch_size scans per call).

With ``--quality``, both models are also trained for the same wall time on a small
synthetic cohort (LDAE with the quick settings of bench_model_quality; the voxel DAE
for as many epochs as fit in LDAE's fit time, from the time of one epoch) and their
reconstructions of held-out scans are scored (SSIM, PSNR) against the seconds per scan
they took, next to the autoencoder alone.

    python benchmarks/bench_inference.py --quick   # 32x40x32, small architecture (~5 min)
    python benchmarks/bench_inference.py --quick --quality   # + quality at equal training time (~12 min)
    python benchmarks/bench_inference.py           # + 128x160x128, small and paper architectures
    python benchmarks/bench_inference.py --device cuda --precision bf16   # on a GPU, mixed precision

Writes docs/benchmarks/inference[_quick][_cuda][_bf16].json and .md.
"""

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import GroupShuffleSplit
from torch.utils.flop_counter import FlopCounterMode

from ldae import LDAEEncoder
from ldae._files import write_atomically
from ldae.baselines import VoxelDAEEncoder
from ldae.datasets import make_synthetic_cohort
from ldae.diffusion import NoiseSchedule, ddim_decode
from ldae.generation import autoencoder_reconstruction
from ldae.imaging import as_volume_dataset
from ldae.metrics import psnr, ssim
from ldae.model_selection import markdown_table
from ldae.representation import shifted_eps
from ldae.training.device import autocast, resolve_precision

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
# (grid, architecture, scans per call): the small grid at the preset's batch size, the
# paper grid one scan at a time (a batch of paper scans needs tens of GB on a CPU)
QUICK = dict(cases=[((32, 40, 32), "small", 8)], steps=[10, 20, 50, 100])
FULL = dict(cases=[((32, 40, 32), "small", 8), ((128, 160, 128), "small", 1),
                   ((128, 160, 128), "paper", 1)], steps=[10, 20, 50, 100])
# scans per call of the DDIM-loop measurement, by grid (the library samples 2 x batch_size)
LOOP_BATCHES = {(32, 40, 32): (1, 4, 16), (128, 160, 128): (1, 2)}
CHECK_STEPS = 10
QUALITY = dict(subjects=20, held_out_scans=8, steps=[10, 20],
               ldae=dict(ae_epochs=4, diffusion_epochs=10, representation_epochs=10))
TIMESTEP = 100  # below every preset's code_timesteps, so LDAE's step runs G_psi too


# ------------------------------------------------------------------ one call


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _seconds(call):
    start = time.perf_counter()
    call()
    _sync()
    return time.perf_counter() - start


def count_flops(call):
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def measure(call, max_seconds, n_scans):
    """FLOPs (counted on a warm-up call) and median seconds of up to 3 more calls, per scan."""
    flops = count_flops(call)
    times = [_seconds(call)]
    while len(times) < 3 and sum(times) < max_seconds / 4:
        times.append(_seconds(call))
    return {"seconds": statistics.median(times) / n_scans, "flops": flops / n_scans,
            "estimated": False}


# ------------------------------------------------------------------ the two models


def fitted_models(shape, architecture, scan, device, precision):
    """Both models with untrained (0-epoch) networks: timing does not depend on training."""
    ldae = LDAEEncoder(preset=architecture, image_shape=shape, ae_epochs=0, diffusion_epochs=0,
                       representation_epochs=0, validation_fraction=0, random_state=0,
                       device=device, precision=precision).fit(scan)
    voxel = VoxelDAEEncoder(preset=f"{architecture}-ldae-unet", image_shape=shape, epochs=0,
                            random_state=0, device=device, precision=precision).fit(scan)
    return ldae, voxel


def ldae_calls(model, volumes, device):
    """The network calls of LDAE inference on a batch of preprocessed volumes, by name."""
    x = torch.as_tensor(volumes).unsqueeze(1).to(device)
    with torch.inference_mode():
        z = model.autoencoder_.encode(x)[0]
        reads_latent = model.config_.semantic_encoder == "latent"
        y = model.semantic_encoder_(z if reads_latent else x)
    t = torch.full((len(x),), TIMESTEP, device=device)
    schedule = NoiseSchedule()
    return {
        "AE encode": lambda: model.autoencoder_.encode(x),
        "semantic encoder": lambda: model.semantic_encoder_(z if reads_latent else x),
        "step": lambda: shifted_eps(model.unet_, model.estimator_, z, t, y, schedule),
        "AE decode": lambda: model.autoencoder_.decode(z),
    }, reads_latent


def voxel_calls(model, volumes, device):
    x = torch.as_tensor(volumes).unsqueeze(1).to(device)
    with torch.inference_mode():
        y = model.semantic_encoder_(x)
    t = torch.full((len(x),), TIMESTEP, device=device)
    return {"semantic encoder": lambda: model.semantic_encoder_(x),
            "step": lambda: model.denoiser_(x, t, class_labels=y)}, (x, t, y)


def voxel_step_flops_on_meta(model, inputs):
    meta = copy.deepcopy(model.denoiser_).to("meta")
    x, t, y = (tensor.to("meta") for tensor in inputs)
    return count_flops(lambda: meta(x, t, class_labels=y))


# ------------------------------------------------------------------ composition


def compose(calls, steps, *, ae_in_transform, autoencoder):
    """Seconds per scan of each public method at ``steps`` DDIM steps."""
    base = calls["preprocessing"]["seconds"] + calls["semantic encoder"]["seconds"]
    encode = base + (calls["AE encode"]["seconds"] if autoencoder else 0.0)
    step = calls["step"]["seconds"]
    seconds = {"transform": base + (calls["AE encode"]["seconds"] if ae_in_transform else 0.0)}
    for count in steps:
        seconds[f"encode_stochastic ({count})"] = encode + count * step
        seconds[f"reconstruct ({count})"] = (encode + 2 * count * step
                                             + (calls["AE decode"]["seconds"] if autoencoder else 0.0))
    return seconds


def where_time_goes(calls, steps):
    """Share of LDAE reconstruct time per part, at ``steps`` steps."""
    parts = {"preprocessing": calls["preprocessing"]["seconds"],
             "autoencoder (encode + decode)": calls["AE encode"]["seconds"] + calls["AE decode"]["seconds"],
             "semantic encoder": calls["semantic encoder"]["seconds"],
             f"UNet steps (2 x {steps})": 2 * steps * calls["step"]["seconds"]}
    total = sum(parts.values())
    return {name: value / total for name, value in parts.items()}


# ------------------------------------------------------------------ one case


def benchmark_case(shape, architecture, n_scans, steps, max_seconds, device, precision, say):
    scans = make_synthetic_cohort(max(2, n_scans // 2), shape=shape, random_state=0).images[:n_scans]
    ldae, voxel = fitted_models(shape, architecture, scans[:1], device, precision)
    dtype = resolve_precision(precision, device, "sampling")

    def preprocess():
        dataset = as_volume_dataset(scans, ldae.preprocessing_)
        return np.stack([dataset[index] for index in range(len(scans))]).astype(np.float32)

    volumes = preprocess()
    preprocessing = measure(preprocess, max_seconds, n_scans)

    calls = {"LDAE": {"preprocessing": preprocessing}, "voxel DAE": {"preprocessing": preprocessing}}
    ldae_network_calls, reads_latent = ldae_calls(ldae, volumes, device)
    with torch.inference_mode(), autocast(device, dtype):
        for name, call in ldae_network_calls.items():
            calls["LDAE"][name] = measure(call, max_seconds, n_scans)
            say(f"{shape} {architecture} LDAE {name}: {calls['LDAE'][name]['seconds']:.3g} s")
        voxel_network_calls, inputs = voxel_calls(voxel, volumes, device)
        calls["voxel DAE"]["semantic encoder"] = measure(voxel_network_calls["semantic encoder"],
                                                         max_seconds, n_scans)
        rate = calls["LDAE"]["step"]["flops"] / calls["LDAE"]["step"]["seconds"]
        flops = voxel_step_flops_on_meta(voxel, inputs) / n_scans
        if flops * n_scans / rate <= max_seconds:
            calls["voxel DAE"]["step"] = measure(voxel_network_calls["step"], max_seconds, n_scans)
        else:
            calls["voxel DAE"]["step"] = {"seconds": flops / rate, "flops": flops, "estimated": True}
        say(f"{shape} {architecture} voxel DAE step: {calls['voxel DAE']['step']['seconds']:.3g} s"
            + (" (est.)" if calls["voxel DAE"]["step"]["estimated"] else ""))

    seconds = {"LDAE": compose(calls["LDAE"], steps, ae_in_transform=reads_latent, autoencoder=True),
               "voxel DAE": compose(calls["voxel DAE"], steps, ae_in_transform=False,
                                    autoencoder=False)}
    return {
        "shape": list(shape), "architecture": architecture, "scans_per_call": n_scans,
        "calls": calls, "seconds": seconds,
        "speedup": {column: seconds["voxel DAE"][column] / seconds["LDAE"][column]
                    for column in seconds["LDAE"]},
        "estimated": calls["voxel DAE"]["step"]["estimated"],
        "parameters": {"LDAE latent UNet": _parameters(ldae.unet_),
                       "LDAE gradient estimator": _parameters(ldae.estimator_),
                       "voxel DAE denoiser": _parameters(voxel.denoiser_)},
        "where_ldae_reconstruct_time_goes": {count: where_time_goes(calls["LDAE"], count)
                                             for count in (min(steps), max(steps))},
        "check": end_to_end_check(ldae, voxel, scans, seconds, max_seconds, say),
        "ddim_loop": ddim_loop(ldae, LOOP_BATCHES.get(tuple(shape), (1,)) if architecture == "small"
                               else (), CHECK_STEPS, max_seconds, device, dtype),
    }


def end_to_end_check(ldae, voxel, scans, seconds, max_seconds, say):
    """Public methods on the scans timed end to end, per scan, against the composition."""
    check = {}
    for name, model in (("LDAE", ldae), ("voxel DAE", voxel)):
        for column, steps in (("transform", None), (f"reconstruct ({CHECK_STEPS})", CHECK_STEPS)):
            composed = seconds[name][column]
            if composed * len(scans) > max_seconds:
                continue
            if steps is None:
                model.transform(scans)  # warm-up
                measured = _seconds(lambda: model.transform(scans)) / len(scans)
            else:
                model.reconstruct(scans, steps=2)  # warm-up: the same shapes, fewer steps
                measured = _seconds(lambda: model.reconstruct(scans, steps=steps)) / len(scans)
            check[f"{name} {column}"] = {"measured_s": measured, "composed_s": composed}
            say(f"check {name} {column}: measured {measured:.3g} s, composed {composed:.3g} s")
    return check


def ddim_loop(model, batches, steps, max_seconds, device, dtype):
    """Per scan, one LDAE step and a ``steps``-step DDIM decode loop at each number of scans
    per call: the loop's cost beyond its network calls, and what batching scans buys."""
    schedule = NoiseSchedule()
    rows = []
    for size in batches:
        z = torch.randn(size, *model.config_.latent_shape, device=device)
        y = torch.randn(size, model.config_.embedding_dim, device=device)
        t = torch.full((size,), TIMESTEP, device=device)

        def eps_fn(z_t, t_, y=y):
            return shifted_eps(model.unet_, model.estimator_, z_t, t_, y, schedule)

        with torch.inference_mode(), autocast(device, dtype):
            step = measure(lambda: eps_fn(z, t), max_seconds, size)["seconds"]
            ddim_decode(eps_fn, z, schedule, 1)  # warm-up
            loop = _seconds(lambda: ddim_decode(eps_fn, z, schedule, steps)) / size
        rows.append({"scans per call": size, "step s per scan": step, "loop s per scan": loop,
                     "loop / (steps x step)": loop / (steps * step)})
    return rows


def _parameters(network):
    return sum(parameter.numel() for parameter in network.parameters())


# ------------------------------------------------------------------ quality


def quality_at_equal_training_time(device, say):
    """Both models trained for the same wall time; held-out reconstruction quality and cost."""
    cohort = make_synthetic_cohort(QUALITY["subjects"], shape=(32, 40, 32), random_state=0)
    train, held_out = next(GroupShuffleSplit(1, test_size=0.2, random_state=0)
                           .split(cohort.images, groups=cohort.frame.subject))
    scans, tests = cohort.images[train], cohort.images[held_out[:QUALITY["held_out_scans"]]]
    ldae = LDAEEncoder(preset="small", validation_fraction=0, random_state=0, device=device,
                       **QUALITY["ldae"]).fit(scans)
    budget = sum(ldae.fit_seconds_.values())
    one_epoch = VoxelDAEEncoder(preset="small-ldae-unet", epochs=1, random_state=0,
                                device=device).fit(scans).fit_seconds_["voxel_dae"]
    epochs = max(1, int(budget // one_epoch))
    voxel = VoxelDAEEncoder(preset="small-ldae-unet", epochs=epochs, random_state=0,
                            device=device).fit(scans)
    say(f"quality: LDAE trained {budget:.0f} s, voxel DAE {epochs} epochs in "
        f"{voxel.fit_seconds_['voxel_dae']:.0f} s")
    dataset = as_volume_dataset(tests, ldae.preprocessing_)  # what both models reconstruct
    targets = np.stack([dataset[index] for index in range(len(tests))])
    rows = [_scored("LDAE autoencoder alone", None, targets,
                    lambda: autoencoder_reconstruction(ldae, tests))]
    for steps in QUALITY["steps"]:
        for name, model in (("LDAE", ldae), ("voxel DAE", voxel)):
            rows.append(_scored(name, steps, targets,
                                lambda: model.reconstruct(tests, steps=steps)))
            say(f"quality: {name} {steps} steps: SSIM {rows[-1]['ssim']:.4f}, "
                f"{rows[-1]['seconds_per_scan']:.3g} s per scan")
    return {"train_scans": len(scans), "held_out_scans": len(tests),
            "training_seconds": {"LDAE": budget, "voxel DAE": voxel.fit_seconds_["voxel_dae"]},
            "ldae_epochs": QUALITY["ldae"], "voxel_dae_epochs": epochs, "rows": rows}


def _scored(model, steps, targets, reconstruct):
    start = time.perf_counter()
    outputs = reconstruct()
    seconds = (time.perf_counter() - start) / len(targets)
    return {"model": model, "steps": steps, "seconds_per_scan": seconds,
            "ssim": float(np.mean(ssim(outputs, targets))),
            "psnr": float(np.mean(psnr(outputs, targets)))}


# ------------------------------------------------------------------ report


def _markdown(result):
    lines = [f"# Inference cost: LDAE against the voxel DAE with the same denoiser ({result['mode']})",
             "", f"Command: `{result['command']}`", "",
             f"Device: {result['machine']['device']}, {result['precision']}, {result['machine']['threads']} "
             f"torch threads, load average at start {result['machine']['load_average']}. "
             "Untrained (0-epoch) networks: the figures time network calls, not model quality. "
             "Seconds per scan of each method are composed from the timed calls (see "
             "`benchmarks/bench_inference.py`); \"est.\": not run, estimated from its FLOPs at the "
             "FLOP rate of LDAE's step of the same architecture.", ""]
    for case in result["cases"]:
        shape = "×".join(map(str, case["shape"]))
        lines += [f"## {shape}, `{case['architecture']}` architecture, "
                  f"{case['scans_per_call']} scan(s) per call", "",
                  "Parameters: " + ", ".join(f"{name} {count:,}"
                                             for name, count in case["parameters"].items()) + ".", "",
                  "One call, per scan:", ""]
        rows = []
        for model, calls in case["calls"].items():
            for name, call in calls.items():
                rows.append({"model": model, "call": name,
                             "seconds": f"{call['seconds']:.3g}" + (" est." if call["estimated"] else ""),
                             "GFLOP": f"{call['flops'] / 1e9:.4g}"})
        lines += [markdown_table(pd.DataFrame(rows)), "", "Scans per second (DDIM steps in brackets):", ""]
        table = pd.DataFrame({model: {column: 1.0 / value for column, value in seconds.items()}
                              for model, seconds in case["seconds"].items()}).T
        table.loc["LDAE speed-up (×)"] = pd.Series(case["speedup"])
        lines += [markdown_table(table.map(lambda v: f"{v:.3g}").reset_index(names="model")), ""]
        if case["estimated"]:
            lines += ["The voxel DAE's step is estimated (est.), so are its figures and the "
                      "speed-ups.", ""]
        for count, shares in case["where_ldae_reconstruct_time_goes"].items():
            lines.append(f"LDAE reconstruct at {count} steps: " + ", ".join(
                f"{name} {share:.0%}" for name, share in shares.items()) + ".")
        if case["check"]:
            lines += ["", "Public methods timed end to end against the composition:", "",
                      markdown_table(pd.DataFrame([
                          {"method": name, "measured s": f"{value['measured_s']:.3g}",
                           "composed s": f"{value['composed_s']:.3g}",
                           "measured / composed": f"{value['measured_s'] / value['composed_s']:.2f}"}
                          for name, value in case["check"].items()]))]
        if case.get("ddim_loop"):
            lines += ["", f"A DDIM decode loop of {CHECK_STEPS} LDAE steps against {CHECK_STEPS} × "
                      "one step, per scan, by scans per call:", "",
                      markdown_table(pd.DataFrame(case["ddim_loop"]).map(
                          lambda v: v if isinstance(v, int) else f"{v:.3g}"))]
        lines.append("")
    if "quality" in result:
        quality = result["quality"]
        lines += ["## Reconstruction quality at equal training time (32×40×32, `small`)", "",
                  f"{quality['train_scans']} training scans of a synthetic cohort, "
                  f"{quality['held_out_scans']} held-out scans of other subjects. LDAE trained "
                  f"{quality['training_seconds']['LDAE']:.0f} s ({quality['ldae_epochs']}), the "
                  f"voxel DAE {quality['voxel_dae_epochs']} epochs in "
                  f"{quality['training_seconds']['voxel DAE']:.0f} s. Seconds per scan include "
                  "preprocessing and the autoencoder; both models at their default "
                  "precision=\"auto\".", "",
                  markdown_table(pd.DataFrame([
                      {"model": row["model"], "DDIM steps": row["steps"] or "",
                       "SSIM": f"{row['ssim']:.4f}", "PSNR (dB)": f"{row['psnr']:.2f}",
                       "seconds per scan": f"{row['seconds_per_scan']:.3g}"}
                      for row in quality["rows"]])), ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32x40x32, small architecture")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="of every network call and public method, both models (bf16: "
                             "autocast, the mixed precision of a GPU)")
    parser.add_argument("--quality", action="store_true",
                        help="also train both models for the same wall time and score "
                             "their reconstructions of held-out scans")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="longest call run; longer network calls are estimated, longer "
                             "end-to-end checks skipped")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    torch.manual_seed(0)
    device = torch.device(args.device)
    result = {
        "command": " ".join(["python benchmarks/bench_inference.py", *(sys.argv[1:] if argv is None else argv)]),
        "mode": "quick" if args.quick else "full",
        "precision": "float32" if args.precision == "fp32" else "bfloat16 autocast",
        "machine": {"device": (torch.cuda.get_device_name() if device.type == "cuda"
                               else platform.processor() or "CPU"),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "load_average": [round(x, 1) for x in os.getloadavg()]},
        "cases": [benchmark_case(shape, architecture, n_scans, settings["steps"],
                                 args.max_seconds, device, args.precision, print)
                  for shape, architecture, n_scans in settings["cases"]],
    }
    if args.quality:
        result["quality"] = quality_at_equal_training_time(device, print)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    name = "inference_quick" if args.quick else "inference"
    if device.type == "cuda":
        name += "_cuda"
    if args.precision != "fp32":
        name += f"_{args.precision}"
    write_text(OUTPUT / f"{name}.json", json.dumps(result, indent=2) + "\n")
    markdown = _markdown(result)
    write_text(OUTPUT / f"{name}.md", markdown + "\n")
    print(markdown)
    return 0


def write_text(path, text):
    write_atomically(path, lambda temporary: temporary.write_text(text))


if __name__ == "__main__":
    sys.exit(main())
