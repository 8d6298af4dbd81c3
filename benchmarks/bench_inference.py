"""Inference throughput and training cost: LDAE against the voxel-space diffusion autoencoder.

Both models run in the same run on the same scans, device, precision, batch size
and DDIM steps: scans/s of ``transform`` (the semantic embedding),
``encode_stochastic`` (DDIM inversion, S network evaluations) and ``reconstruct``
(inversion + decoding, 2S evaluations, plus the autoencoder for LDAE), the LDAE
speed-up (LDAE scans/s ÷ voxel-DAE scans/s; the paper claims ~20x), the training
seconds per stage and epoch, and the peak memory of each measurement.

Throughput counts network evaluations, not quality: the models are fitted for ONE
epoch per stage on a few synthetic scans, which is enough to time them (their
embeddings and reconstructions are meaningless). Each measurement runs in its own
subprocess after a warm-up call, so that its peak memory is its own: the maximum
resident set size (getrusage) on the CPU, torch.cuda.max_memory_allocated on a GPU.

    python benchmarks/bench_inference.py --quick   # 32x40x32, 10/20 steps (2-core CPU)
    python benchmarks/bench_inference.py           # 64x80x64 and 128x160x128, 10/20/50/100 steps (GPU)

Writes docs/benchmarks/inference[_quick].json and .md.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
import torch
from _memory import PeakRSS

from ldae._files import write_atomically

from ldae.training.device import resolve_device, resolve_precision

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
MODELS = ("LDAE", "voxel DAE")
QUICK = dict(shapes=[(32, 40, 32)], steps=[10, 20], n_scans=4, n_subjects=3, preset="small",
             epochs=1)
FULL = dict(shapes=[(64, 80, 64), (128, 160, 128)], steps=[10, 20, 50, 100], n_scans=16,
            n_subjects=4, preset="small", epochs=1)


# ------------------------------------------------------------------ workers


def _build(model, preset, shape, epochs):
    if model == "LDAE":
        from ldae import LDAEEncoder

        return LDAEEncoder(preset=preset, image_shape=shape, ae_epochs=epochs,
                           diffusion_epochs=epochs, representation_epochs=epochs,
                           validation_fraction=0, random_state=0)
    from ldae.baselines import VoxelDAEEncoder

    return VoxelDAEEncoder(preset=preset, image_shape=shape, epochs=epochs, random_state=0)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def worker_fit(spec):
    """Fit one model (after a warm-up fit on one batch) and save it."""
    scans = np.load(spec["scans"])
    epochs = spec.get("epochs", 1)
    if epochs:
        warm_up = _build(spec["model"], spec["preset"], tuple(spec["shape"]), epochs)
        warm_up.fit(scans[:warm_up._resolve_config().batch_size])
    model = _build(spec["model"], spec["preset"], tuple(spec["shape"]), epochs)
    with PeakRSS() as memory:
        model.fit(scans)
    joblib.dump(model, spec["path"])
    parameters = {key: sum(p.numel() for p in value.parameters())
                  for key, value in vars(model).items()
                  if key.endswith("_") and isinstance(value, torch.nn.Module)}
    return {"fit_seconds": model.fit_seconds_, "n_scans": len(scans), "parameters": parameters,
            "peak_mb": memory.peak_mb, "before_mb": memory.before_mb}


def worker_measure(spec):
    """Time one operation of a saved model on the scans, after a warm-up call."""
    model = joblib.load(spec["path"])
    scans = np.load(spec["scans"])
    operation, steps = spec["operation"], spec["steps"]

    def run(batch, n_steps):
        if operation == "transform":
            return model.transform(batch)
        return getattr(model, operation)(batch, steps=n_steps)

    run(scans, 2)  # warm-up at the timed batch size: oneDNN builds kernels per shape
    with PeakRSS() as memory:
        start = time.perf_counter()
        run(scans, steps)
        _sync()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "scans_per_s": len(scans) / seconds,
            "peak_mb": memory.peak_mb, "before_mb": memory.before_mb}


def _in_subprocess(kind, spec):
    command = [sys.executable, __file__, "--worker", kind, json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {kind} {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ driver


def _columns(steps):
    return [("transform", None)] + [(op, s) for op in ("encode_stochastic", "reconstruct")
                                     for s in steps]


def _column_name(operation, steps):
    return operation if steps is None else f"{operation} ({steps} steps)"


def benchmark_shape(shape, settings, scratch, say):
    from ldae.datasets import make_synthetic_cohort

    cohort = make_synthetic_cohort(settings["n_subjects"], shape=shape, random_state=0)
    scans_path = str(Path(scratch) / f"scans_{'x'.join(map(str, shape))}.npy")
    np.save(scans_path, cohort.images[:settings["n_scans"]])
    result = {"shape": list(shape), "n_scans": settings["n_scans"], "training": {},
              "throughput": {}, "peak_mb": {}}
    for model in MODELS:
        path = str(Path(scratch) / f"{model.replace(' ', '_')}_{'x'.join(map(str, shape))}.joblib")
        spec = {"model": model, "preset": settings["preset"], "shape": list(shape),
                "scans": scans_path, "path": path, "epochs": settings["epochs"]}
        say(f"{shape} {model}: fit ({settings['epochs']} epoch(s) per stage)")
        result["training"][model] = _in_subprocess("fit", spec)
        result["throughput"][model], result["peak_mb"][model] = {}, {}
        for operation, steps in _columns(settings["steps"]):
            measured = _in_subprocess("measure", {**spec, "operation": operation, "steps": steps})
            column = _column_name(operation, steps)
            result["throughput"][model][column] = measured["scans_per_s"]
            result["peak_mb"][model][column] = (f"{measured['peak_mb']:.0f} "
                                                f"({measured['before_mb']:.0f})")
            say(f"  {model} {column}: {measured['scans_per_s']:.3f} scans/s, "
                f"peak {measured['peak_mb']:.0f} MB (before {measured['before_mb']:.0f})")
    result["ldae_speedup"] = {
        column: result["throughput"]["LDAE"][column] / result["throughput"]["voxel DAE"][column]
        for column in result["throughput"]["LDAE"]}
    return result


def _markdown(result):
    import pandas as pd

    from ldae.model_selection import markdown_table

    lines = [f"# Inference throughput: LDAE against the voxel-space DAE ({result['mode']})", "",
             f"Command: `{result['command']}`", "",
             f"Device: {result['machine']['device']}, precision {result['precision']}, "
             f"{result['machine']['threads']} torch threads, load average at start "
             f"{result['machine']['load_average']}. Preset architectures: "
             f"`{result['preset']}`. " + result["note"], ""]
    for shape_result in result["shapes"]:
        shape = "×".join(map(str, shape_result["shape"]))
        table = pd.DataFrame(shape_result["throughput"]).T
        table.loc["LDAE speed-up (×)"] = pd.Series(shape_result["ldae_speedup"])
        lines += [f"## {shape}, {shape_result['n_scans']} scans", "", "Scans per second:", "",
                  markdown_table(table.map(lambda v: f"{v:.3g}").reset_index(names="model")), "",
                  "Peak memory during each call, MB (in brackets: before the call, with "
                  "libraries, model and scans loaded):", "",
                  markdown_table(pd.DataFrame(shape_result["peak_mb"]).T
                                 .reset_index(names="model")), "",
                  "Training (seconds of the one epoch per stage, after a warm-up fit):", ""]
        rows = []
        for model, training in shape_result["training"].items():
            for stage, seconds in training["fit_seconds"].items():
                rows.append({"model": model, "stage": stage, "seconds per epoch": f"{seconds:.2f}",
                             "seconds per scan": f"{seconds / training['n_scans']:.3f}",
                             "peak MB (whole fit)": f"{training['peak_mb']:.0f} "
                                                    f"({training['before_mb']:.0f})"})
        lines += [markdown_table(pd.DataFrame(rows)), "", "Parameters: " + "; ".join(
            f"{model}: " + ", ".join(f"{name} {count:,}" for name, count in training["parameters"].items())
            for model, training in shape_result["training"].items()), ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32x40x32, 10/20 steps")
    parser.add_argument("--shape", help="one grid DxHxW instead of the mode's (a custom run)")
    parser.add_argument("--steps", type=int, nargs="+", help="DDIM steps instead of the mode's")
    parser.add_argument("--scans", type=int, help="number of scans instead of the mode's")
    parser.add_argument("--epochs", type=int, choices=(0, 1),
                        help="0: untrained networks (only the autoencoder's latents are "
                             "computed); the fastest way to time a large grid")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, spec = args.worker
        outcome = (worker_fit if kind == "fit" else worker_measure)(json.loads(spec))
        print(json.dumps(outcome))
        return 0

    settings = dict(QUICK if args.quick else FULL)
    custom = {key: value for key, value in (
        ("shapes", args.shape and [tuple(int(size) for size in args.shape.split("x"))]),
        ("steps", args.steps), ("n_scans", args.scans), ("epochs", args.epochs))
        if value is not None}
    settings.update(custom)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "CPU"
    result = {
        "command": "python benchmarks/bench_inference.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "mode": ("custom" if custom else "quick" if args.quick else "full"),
        "preset": settings["preset"],
        "note": (f"Both models are fitted for {settings['epochs']} epoch(s) per stage on the "
                 "benchmark scans: the figures time network evaluations, not model quality. "
                 "Each figure is one subprocess, timed after a warm-up call."),
        "machine": {"device": device, "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "load_average": [round(x, 1) for x in os.getloadavg()]},
        "shapes": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        for shape in settings["shapes"]:
            result["shapes"].append(benchmark_shape(shape, settings, scratch, print))
    result["precision"] = str(resolve_precision("auto", resolve_device("auto")) or torch.float32)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    name = "inference_quick" if args.quick else "inference"
    if custom:
        name = "inference_" + "_".join("x".join(map(str, shape)) for shape in settings["shapes"])
    write_text(OUTPUT / f"{name}.json", json.dumps(result, indent=2) + "\n")
    markdown = _markdown(result)
    write_text(OUTPUT / f"{name}.md", markdown + "\n")
    print(markdown)
    return 0



def write_text(path, text):
    write_atomically(path, lambda temporary: temporary.write_text(text))


if __name__ == "__main__":
    sys.exit(main())
