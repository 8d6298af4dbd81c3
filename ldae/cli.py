"""The ``ldae`` command line.

- ``ldae demo [--quick]``: synthetic cohort -> fit -> embed -> probe -> compare -> report.
- ``ldae fit --manifest cohort.tsv --out model/``: train an LDAEEncoder on the scans of
  a manifest (see :func:`ldae.imaging.read_manifest`). Every stage checkpoints into
  ``<out>/checkpoints``: the same command run again after an interruption (even
  SIGKILL) resumes where the last checkpoint left off. Launched with
  ``torchrun --nproc_per_node=N -m ldae fit ...`` (or ``torchrun $(which ldae) fit``),
  it trains data-parallel on N processes; process 0 writes the files.
- ``ldae embed --model model/ --manifest cohort.tsv --out embeddings.csv``: embed the
  scans of a manifest, streamed in chunks with a progress bar. Finished chunks are
  written to ``<out>.partial/`` as they complete, so the same command run again skips
  the scans already embedded. A run holds ``<out>.lock`` (released by the system
  however the run ends): a second run writing the same ``--out`` is refused.

Errors about the input (a bad manifest, scan or checkpoint) and refusals of the
system (a full disk, a read-only folder) are printed as one line naming the culprit,
with exit status 1.
"""

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from ._files import write_atomically
from .exceptions import InputError, LDAEError

_MODEL_FILE = "model.pt"
_ID_COLUMNS = ["subject", "session", "months", "path"]
_SEPARATORS = {".csv": ",", ".tsv": "\t"}


def main(argv=None):
    """Entry point of the ``ldae`` console script and of ``python -m ldae``.

    Parameters
    ----------
    argv : list of str, optional
        The arguments; None reads ``sys.argv``.

    Returns
    -------
    int
        The exit status: 0 on success, 1 when ldae refused an input.
    """
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except LDAEError as error:
        print(f"ldae {args.command}: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the machine refused: a full disk, a read-only folder, ...
        print(f"ldae {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


def _parser():
    parser = argparse.ArgumentParser(
        prog="ldae", description="Latent Diffusion Autoencoders for brain MRI")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="synthetic cohort -> fit -> embed -> probe -> compare -> report",
        description="Synthetic cohort of 60 subjects -> fit the small preset -> embed -> "
                    "probe -> compare with baselines -> generative tools -> HTML report. "
                    "About 10 minutes on 2 CPU cores with native bf16, several times longer "
                    "without (--quick: about 2 minutes).")
    demo.add_argument("--quick", action="store_true",
                      help="a smoke run: the tiny preset, 20 subjects, fewer epochs, about 2 "
                           "minutes on 2 cores")
    demo.add_argument("--output", default="ldae-demo", help="report folder (default: ldae-demo)")
    demo.add_argument("--subjects", type=int, default=None,
                      help="number of synthetic subjects (default: 60, --quick 20; at least 20)")
    demo.add_argument("--random-state", type=int, default=0)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(run=_demo)

    fit = commands.add_parser(
        "fit", help="train an LDAEEncoder on the scans of a manifest (resumable)")
    fit.add_argument("--manifest", required=True, help="cohort table (.csv/.tsv) with a path column")
    fit.add_argument("--out", required=True, help=f"model folder: {_MODEL_FILE}, fit.json")
    fit.add_argument("--preset", default="small", choices=["tiny", "small", "paper"])
    fit.add_argument("--checkpoint-dir", default=None,
                     help="stage checkpoints (default: <out>/checkpoints)")
    grid = fit.add_mutually_exclusive_group()
    grid.add_argument("--image-shape", type=int, nargs=3, default=None, metavar=("D", "H", "W"),
                      help="voxels of the model grid (default: the preset's, 32 40 32 for "
                           "small, over 176 x 220 x 176 mm of MNI space)")
    grid.add_argument("--voxel-size", type=float, default=None, metavar="MM",
                      help="voxel size of the model grid; its shape follows from the preset's "
                           "field of view (default: the preset's, 5.5 mm for small)")
    fit.add_argument("--brain-mask", default=None,
                     help="NIfTI mask on the model grid; voxels outside are set to 0")
    fit.add_argument("--percentiles", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                     help="intensities mapped to 0 and 1 (default: 0.5 99.5)")
    fit.add_argument("--nan-policy", default=None, choices=["raise", "zero"],
                     help="NaN or infinite voxels: refuse the scan (default) or set them to 0")
    for name in ["embedding-dim", "ae-epochs", "diffusion-epochs", "representation-epochs",
                 "batch-size"]:
        fit.add_argument(f"--{name}", type=int, default=None, help="default: the preset's")
    fit.add_argument("--validation-fraction", type=float, default=0.2,
                     help="fraction of subjects held out for a validation loss (default: 0.2)")
    fit.add_argument("--random-state", type=int, default=0,
                     help="seed (default: 0; a rerun must use the same one to resume)")
    fit.add_argument("--device", default="auto")
    fit.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                     help="training precision (default: auto, bf16 where the hardware has it)")
    _add_common(fit)
    fit.set_defaults(run=_fit)

    embed = commands.add_parser(
        "embed", help="embed the scans of a manifest with a fitted model (resumable)")
    embed.add_argument("--model", required=True, help=f"model folder (or its {_MODEL_FILE})")
    embed.add_argument("--manifest", required=True, help="cohort table (.csv/.tsv) with a path column")
    embed.add_argument("--out", required=True,
                       help="embedding table: .csv, .tsv, or .parquet (needs pyarrow)")
    embed.add_argument("--chunk-size", type=int, default=256,
                       help="scans embedded and saved together (default: 256)")
    _add_common(embed)
    embed.set_defaults(run=_embed)
    return parser


def _add_common(command):
    command.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                         help="unusable scans: stop (default), or skip them and report them")
    command.add_argument("--cache-dir", default=None, help="cache of preprocessed volumes")
    command.add_argument("--num-workers", type=int, default=0,
                         help="worker processes loading scans (default: 0)")
    command.add_argument("--quiet", action="store_true", help="no progress bars")


def _demo(args):
    from .demo import run_demo

    run_demo(args.output, quick=args.quick, n_subjects=args.subjects,
             random_state=args.random_state, verbose=0 if args.quiet else 1)


# ------------------------------------------------------------------- fit


def _fit(args):
    from .encoder import LDAEEncoder
    from .imaging import read_manifest

    frame = read_manifest(args.manifest, check_files=args.on_error == "raise")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = LDAEEncoder(**_encoder_params(args, out))
    start = time.perf_counter()
    model.fit(frame["path"], groups=frame["subject"])
    if os.environ.get("RANK", "0") != "0":
        return  # data-parallel: process 0 writes the results
    model.save(out / _MODEL_FILE)
    if len(model.skipped_scans_):
        _write_table(model.skipped_scans_, out / "skipped.tsv")
    summary = {
        "manifest": str(Path(args.manifest).absolute()),
        "n_scans": int(model.n_scans_),
        "n_skipped": len(model.skipped_scans_),
        "seconds": time.perf_counter() - start,
        "stage_seconds": model.fit_seconds_,
        "history": model.history_,
    }
    write_atomically(out / "fit.json",
                      lambda temporary: temporary.write_text(json.dumps(summary, indent=2)))
    _report(f"trained on {summary['n_scans']} scans ({summary['n_skipped']} skipped) in "
            f"{summary['seconds']:.1f} s; wrote {out / _MODEL_FILE}", args)


def _encoder_params(args, out):
    from .imaging import Preprocessing
    from .presets import grid_for_voxel_size, resolve_config

    params = {
        "preset": args.preset,
        "checkpoint_dir": str(args.checkpoint_dir or out / "checkpoints"),
        "cache_dir": args.cache_dir,
        "on_error": args.on_error,
        "validation_fraction": args.validation_fraction,
        "device": args.device,
        "precision": args.precision,
        "num_workers": args.num_workers,
        "random_state": args.random_state,
        "verbose": 0 if args.quiet else 1,
    }
    overrides = {
        "image_shape": None if args.image_shape is None else tuple(args.image_shape),
        "embedding_dim": args.embedding_dim,
        "ae_epochs": args.ae_epochs,
        "diffusion_epochs": args.diffusion_epochs,
        "representation_epochs": args.representation_epochs,
        "batch_size": args.batch_size,
        **({} if args.voxel_size is None else grid_for_voxel_size(args.preset, args.voxel_size)),
    }
    params = {**params, **{key: value for key, value in overrides.items() if value is not None}}
    config = resolve_config(args.preset, image_shape=params.get("image_shape"),
                            field_of_view=params.get("field_of_view"))
    given = {"percentiles": args.percentiles, "brain_mask": args.brain_mask,
             "nan_policy": args.nan_policy}
    params["preprocessing"] = Preprocessing(
        shape=config.image_shape, affine=config.grid_affine,
        **{key: value for key, value in given.items() if value is not None})
    return params


# ----------------------------------------------------------------- embed


def _embed(args):
    from .encoder import LDAEEncoder
    from .imaging import read_manifest

    out = Path(args.out)
    _check_output_format(out)
    for name, given in (("--manifest", args.manifest), ("--model", args.model)):
        if out.resolve() == Path(given).resolve():
            raise InputError(f"--out {args.out} is the {name} file; it would be overwritten")
    if args.chunk_size < 1:
        raise InputError(f"--chunk-size={args.chunk_size}: expected a positive number of scans")
    model_file = Path(args.model)
    model_file = model_file / _MODEL_FILE if model_file.is_dir() else model_file
    model = LDAEEncoder.load(model_file).set_params(
        on_error=args.on_error, cache_dir=args.cache_dir, num_workers=args.num_workers)
    frame = read_manifest(args.manifest, check_files=args.on_error == "raise")
    with _exclusive(out):
        _embed_into(out, model, model_file, frame, args)


def _embed_into(out, model, model_file, frame, args):
    from tqdm.auto import tqdm

    parts = _Parts(out, _file_digest(model_file))
    done = parts.done_paths()
    todo = frame[~frame["path"].isin(done)]
    start = time.perf_counter()
    with tqdm(total=len(frame), initial=len(frame) - len(todo), unit="scan",
              desc="embedding", disable=args.quiet) as progress:
        for first in range(0, len(todo), args.chunk_size):
            chunk = todo["path"].iloc[first : first + args.chunk_size]
            parts.write(_embed_chunk(model, chunk))
            progress.update(len(chunk))
    seconds = time.perf_counter() - start
    table = parts.merged(frame[[c for c in _ID_COLUMNS if c in frame]])
    features = [column for column in table if column not in (*_ID_COLUMNS, "error")]
    lost = table[table[features].isna().any(axis=1) & table["error"].isna()]
    if len(lost):
        raise LDAEError(f"{out}: {len(lost)} scans have neither an embedding nor an error "
                        f"(e.g. {lost['path'].iloc[0]}); run the command again to embed them")
    _write_table(table, out)
    skipped = table[table["error"].notna()]
    outside = int(table["out_of_distribution"].eq(True).sum())
    write_atomically(
        _sidecar(out), lambda temporary: temporary.write_text(json.dumps({
            "model": str(model_file.absolute()), "model_sha256": parts.model_digest,
            "manifest": str(Path(args.manifest).absolute()), "n_scans": len(table),
            "n_skipped": len(skipped), "n_out_of_distribution": outside,
            "n_embedded_now": len(todo), "seconds": seconds,
            "scans_per_second": len(todo) / seconds if seconds > 0 else None,
        }, indent=2)))
    parts.remove()
    _report(f"embedded {len(todo)} scans in {seconds:.1f} s ({len(frame) - len(todo)} done "
            f"before, {len(skipped)} skipped, {outside} out of distribution); wrote {out}", args)


def _embed_chunk(model, paths):
    """Embeddings of a chunk of scans, by path, with the error of each skipped one."""
    from .imaging import as_volume_dataset

    try:
        embeddings = model.transform(list(paths))
    except InputError:
        if model.on_error != "skip":
            raise
        # no scan of the chunk is usable: each gets its error below
        embeddings = np.full((len(paths), model.config_.embedding_dim), np.nan, np.float32)
    table = pd.DataFrame(embeddings, columns=model.get_feature_names_out())
    table.insert(0, "path", list(paths))
    unusable = np.isnan(embeddings).any(axis=1)
    table.insert(1, "error", None)
    distribution = model.training_distribution_
    table.insert(2, "out_of_distribution",
                 False if distribution is None else distribution.outside(embeddings))
    for row in np.flatnonzero(unusable):
        # Rare: reading the scan again, alone, says what is wrong with it.
        try:
            as_volume_dataset([paths.iloc[row]], model.preprocessing_,
                              reference=(model.config_.image_shape, model.affine_))[0]
            error = "its embedding is not finite"
        except InputError as exc:
            error = str(exc)
        table.loc[row, "error"] = error
    return table


class _Parts:
    """The embeddings of a run so far: chunk files written atomically in
    ``<out>.partial/``, plus the rows of a finished ``<out>`` of the same model."""

    def __init__(self, out, model_digest):
        self.out = out
        self.model_digest = model_digest
        self.folder = out.with_name(out.name + ".partial")
        marker = self.folder / "model.sha256"
        if marker.exists() and marker.read_text().strip() != model_digest:
            raise InputError(
                f"{self.folder}: partial results of another model; delete the folder or "
                "embed with the model that wrote them")
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomically(marker, lambda temporary: temporary.write_text(model_digest))

    def _chunks(self):
        return sorted(self.folder.glob("part-*.csv"))

    def _finished_rows(self):
        """Rows of an existing ``out`` written by the same model, skipped scans excepted."""
        if not (self.out.exists() and _sidecar(self.out).exists()):
            return None
        if json.loads(_sidecar(self.out).read_text()).get("model_sha256") != self.model_digest:
            return None
        table = _read_table(self.out)
        return table[table["error"].isna()].drop(columns=[c for c in _ID_COLUMNS if c != "path"],
                                                 errors="ignore")

    def _tables(self):
        finished = self._finished_rows()
        return ([] if finished is None else [finished]) + [
            pd.read_csv(chunk, dtype={"path": str, "error": str}) for chunk in self._chunks()]

    def done_paths(self):
        """Paths of the scans already embedded (or skipped, with an error) by this model."""
        done = set()
        for table in self._tables():
            features = [column for column in table if column not in ("path", "error")]
            complete = table[features].notna().all(axis=1) | table["error"].notna()
            done.update(table.loc[complete, "path"])
        return done

    def write(self, table):
        # named by time and process: never the name of another chunk
        path = self.folder / f"part-{time.time_ns():020d}-{os.getpid()}.csv"
        write_atomically(path, lambda temporary: table.to_csv(temporary, index=False))

    def merged(self, frame):
        """One row per scan of ``frame`` (same order): its columns, the error, the embedding."""
        tables = self._tables()
        embeddings = pd.concat(tables, ignore_index=True).drop_duplicates("path", keep="last")
        return frame.merge(embeddings, on="path", how="left", validate="many_to_one")

    def remove(self):
        shutil.rmtree(self.folder)


@contextlib.contextmanager
def _exclusive(out):
    """Hold ``<out>.lock`` for the run: a second run on the same --out is refused.

    The lock is an advisory ``flock``: the system releases it when the process
    ends, however it ends, so a killed run never leaves a stale lock.
    """
    lock_path = out.with_name(out.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise InputError(f"--out {out}: another ldae embed ({holder}) is writing it; "
                             "wait for it to finish or choose another --out") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check_output_format(out):
    suffix = out.suffix.lower()
    if suffix not in (*_SEPARATORS, ".parquet"):
        raise InputError(f"--out {out}: expected a .csv, .tsv or .parquet file")
    if suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise InputError(
            f"--out {out}: writing Parquet needs pyarrow (pip install pyarrow); "
            "or write a .csv or .tsv file")


def _write_table(table, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":
        write_atomically(path, lambda temporary: table.to_parquet(temporary, index=False))
    else:
        separator = _SEPARATORS.get(path.suffix.lower(), "\t")
        write_atomically(path, lambda temporary: table.to_csv(temporary, sep=separator,
                                                                index=False))


def _read_table(path):
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, sep=_SEPARATORS[path.suffix.lower()],
                       dtype={"subject": str, "session": str, "path": str, "error": str})


def _sidecar(out):
    return out.with_name(out.name + ".json")


def _file_digest(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _report(message, args):
    if not args.quiet:
        print(message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
