"""The command line: ``ldae fit`` and ``ldae embed`` on a manifest, resumable; SIGKILL."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ldae import LDAEEncoder, cli
from ldae.datasets import make_synthetic_cohort
from ldae.exceptions import SkippedScanWarning
from ldae.training.checkpoint import load_checkpoint

EPOCHS = ["--preset", "tiny", "--ae-epochs", "1", "--diffusion-epochs", "1",
          "--representation-epochs", "1", "--precision", "fp32"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """6 scans of 3 subjects written as files, with their manifest."""
    folder = tmp_path_factory.mktemp("cohort")
    make_synthetic_cohort(3, shape=(32, 40, 32), visit_months=(0, 12), dropout=0,
                          random_state=0, output_dir=folder)
    return folder / "manifest.tsv"


@pytest.fixture(scope="module")
def model_dir(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    assert cli.main(["fit", "--manifest", str(cohort), "--out", str(out), *EPOCHS,
                     "--quiet"]) == 0
    return out


def manifest_paths(manifest):
    return pd.read_csv(manifest, sep="\t")["path"].map(lambda p: str(manifest.parent / p))


def test_fit_writes_a_model_its_summary_and_stage_checkpoints(cohort, model_dir):
    assert {p.name for p in model_dir.iterdir()} == {"model.pt", "fit.json", "checkpoints"}
    assert {p.name for p in (model_dir / "checkpoints").iterdir()} == {
        "autoencoder.pt", "diffusion.pt", "representation.pt"}
    summary = json.loads((model_dir / "fit.json").read_text())
    assert summary["n_skipped"] == 0 and 0 < summary["n_scans"] <= 6
    model = LDAEEncoder.load(model_dir / "model.pt")
    assert model.get_params()["random_state"] == 0 and model.config_.ae_epochs == 1
    assert model.get_params()["precision"] == "fp32"  # --precision reaches the model
    assert set(model.history_) == {"autoencoder", "diffusion", "representation"}


def test_embed_writes_one_row_per_scan_equal_to_transform(cohort, model_dir, tmp_path):
    out = tmp_path / "embeddings.csv"
    assert cli.main(["embed", "--model", str(model_dir), "--manifest", str(cohort),
                     "--out", str(out), "--chunk-size", "4", "--quiet"]) == 0
    table = pd.read_csv(out)
    model = LDAEEncoder.load(model_dir / "model.pt")
    features = list(model.get_feature_names_out())
    assert list(table.columns) == ["subject", "session", "months", "path", "error",
                                   "out_of_distribution", *features]
    assert table["error"].isna().all()
    assert not table["out_of_distribution"].any()  # the scans the model was fitted on
    expected = model.transform(list(table["path"]))
    # chunks of 4 against one batch: float32 convolutions differ in the last bits
    np.testing.assert_allclose(table[features].to_numpy(), expected, rtol=1e-4, atol=1e-5)
    assert sorted(table["path"]) == sorted(manifest_paths(cohort))
    assert not (tmp_path / "embeddings.csv.partial").exists()
    assert json.loads((tmp_path / "embeddings.csv.json").read_text())["n_embedded_now"] == 6


def test_embed_resumes_after_an_interruption_without_redoing_chunks(
        cohort, model_dir, tmp_path, monkeypatch):
    def embed_into(out):
        return ["embed", "--model", str(model_dir / "model.pt"), "--manifest", str(cohort),
                "--out", str(out), "--chunk-size", "2", "--quiet"]

    out = tmp_path / "embeddings.tsv"
    command = embed_into(out)
    embedded = []
    original = cli._embed_chunk

    def interrupted_after_two_chunks(model, paths):
        if len(embedded) == 4:
            raise KeyboardInterrupt
        embedded.extend(paths)
        return original(model, paths)

    monkeypatch.setattr(cli, "_embed_chunk", interrupted_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        cli.main(command)
    parts = sorted(p.name for p in (tmp_path / "embeddings.tsv.partial").iterdir())
    assert len(parts) == 3 and parts[0] == "model.sha256"
    assert all(re.fullmatch(rf"part-\d{{20}}-{os.getpid()}\.csv", name) for name in parts[1:])
    assert not out.exists() and not (tmp_path / "embeddings.tsv.lock").exists()

    before = list(embedded)
    embedded.clear()
    monkeypatch.setattr(cli, "_embed_chunk", lambda model, paths: embedded.extend(paths)
                        or original(model, paths))
    assert cli.main(command) == 0
    assert len(embedded) == 2 and not set(embedded) & set(before)
    resumed = pd.read_csv(out, sep="\t")
    reference = tmp_path / "reference.tsv"
    assert cli.main(embed_into(reference)) == 0
    pd.testing.assert_frame_equal(resumed, pd.read_csv(reference, sep="\t"))
    # Run again once finished: every scan is already embedded.
    embedded.clear()
    assert cli.main(command) == 0 and embedded == []


def test_embed_skips_a_broken_and_a_missing_scan_on_request(cohort, model_dir, tmp_path, capsys):
    manifest = pd.read_csv(cohort, sep="\t")
    manifest["path"] = manifest_paths(cohort)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(Path(manifest["path"][0]).read_bytes()[:-3000])
    extra = pd.DataFrame({"subject": ["sub-009", "sub-009"], "session": ["ses-M00", "ses-M12"],
                          "path": [str(broken), str(tmp_path / "gone.nii.gz")]})
    bad_manifest = tmp_path / "cohort.csv"
    pd.concat([manifest, extra]).to_csv(bad_manifest, index=False)
    out = tmp_path / "embeddings.csv"
    command = ["embed", "--model", str(model_dir), "--manifest", str(bad_manifest),
               "--out", str(out), "--quiet"]

    assert cli.main(command) == 1
    assert "gone.nii.gz does not exist" in capsys.readouterr().err
    with pytest.warns(SkippedScanWarning) as caught:
        assert cli.main([*command, "--on-error", "skip"]) == 0
    warned = " ".join(str(warning.message) for warning in caught)
    assert "broken.nii.gz" in warned and "gone.nii.gz" in warned
    table = pd.read_csv(out).set_index("path")
    assert table["error"].notna().sum() == 2
    assert "truncated gzip file" in table.loc[str(broken), "error"]
    assert "does not exist" in table.loc[str(tmp_path / "gone.nii.gz"), "error"]
    features = [c for c in table if c.startswith("ldaeencoder")]
    assert table.loc[table["error"].notna(), features].isna().all().all()
    assert table.loc[table["error"].isna(), features].notna().all().all()


def test_embed_refuses_partial_results_of_another_model_and_unknown_formats(
        cohort, model_dir, tmp_path, capsys):
    partial = tmp_path / "embeddings.csv.partial"
    partial.mkdir()
    (partial / "model.sha256").write_text("0" * 64)
    command = ["embed", "--model", str(model_dir), "--manifest", str(cohort), "--quiet"]
    assert cli.main([*command, "--out", str(tmp_path / "embeddings.csv")]) == 1
    assert "partial results of another model" in capsys.readouterr().err
    assert cli.main([*command, "--out", str(tmp_path / "embeddings.xlsx")]) == 1
    assert "expected a .csv, .tsv or .parquet file" in capsys.readouterr().err
    status = cli.main([*command, "--out", str(tmp_path / "embeddings.parquet")])
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert status == 1 and "needs pyarrow" in capsys.readouterr().err
    else:
        assert status == 0 and len(pd.read_parquet(tmp_path / "embeddings.parquet")) == 6


def test_a_fit_killed_mid_stage_resumes_without_redoing_finished_stages(cohort, tmp_path, capsys):
    out = tmp_path / "model"
    checkpoints = out / "checkpoints"
    command = ["fit", "--manifest", str(cohort), "--out", str(out), "--preset", "tiny",
               "--ae-epochs", "1", "--diffusion-epochs", "12", "--representation-epochs", "1",
               "--quiet"]
    process = subprocess.Popen([sys.executable, "-m", "ldae", *command],
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _wait_for(checkpoints / "autoencoder.pt", process)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (checkpoints / "diffusion.pt").exists(), "the fit was not killed mid-stage 2"
    assert not (out / "model.pt").exists()
    stage1 = checkpoints / "autoencoder.pt"
    stamp, stage1_seconds = stage1.stat().st_mtime_ns, load_checkpoint(stage1)["seconds"]

    # A truncated checkpoint is refused, naming it.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "autoencoder.pt").write_bytes(stage1.read_bytes()[:-1000])
    assert cli.main([*command, "--checkpoint-dir", str(damaged)]) == 1
    assert f"checkpoint {damaged / 'autoencoder.pt'} is truncated" in capsys.readouterr().err

    # The same command again (in this process: nothing but the files links the runs):
    # stage 1 comes from its checkpoint, untouched.
    assert cli.main(command) == 0
    assert stage1.stat().st_mtime_ns == stamp
    summary = json.loads((out / "fit.json").read_text())
    assert summary["stage_seconds"]["autoencoder"] == stage1_seconds
    assert len(summary["history"]["diffusion"]["loss"]) == 12
    model = LDAEEncoder.load(out / "model.pt")
    embeddings = model.transform(list(manifest_paths(cohort)))
    assert embeddings.shape == (6, model.config_.embedding_dim) and np.isfinite(embeddings).all()


def _wait_for(path, process, timeout=300):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the fit ended (status {process.returncode}) first"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.02)


def test_embed_refuses_to_overwrite_its_manifest(cohort, model_dir, capsys):
    before = cohort.read_bytes()
    assert cli.main(["embed", "--model", str(model_dir), "--manifest", str(cohort),
                     "--out", str(cohort), "--quiet"]) == 1
    assert "is the --manifest file" in capsys.readouterr().err
    assert cohort.read_bytes() == before


def test_version_and_demo_subject_count_are_checked(capsys):
    from ldae import __version__

    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"ldae {__version__}"
    # refused before any work (it used to run 60 subjects)
    assert cli.main(["demo", "--subjects", "0", "--quiet"]) == 1
    assert "n_subjects=0: the demo needs at least 20 subjects" in capsys.readouterr().err


def test_a_full_disk_is_one_line_not_a_traceback(cohort, model_dir, tmp_path, capsys, monkeypatch):
    def disk_full(table, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(cli, "_write_table", disk_full)
    out = tmp_path / "embeddings.csv"
    assert cli.main(["embed", "--model", str(model_dir), "--manifest", str(cohort),
                     "--out", str(out), "--quiet"]) == 1
    error = capsys.readouterr().err
    assert error == f"ldae embed: error: [Errno 28] No space left on device: '{out}'\n"


def test_a_second_embed_into_the_same_out_is_refused_while_one_runs(cohort, model_dir, tmp_path,
                                                                     capsys):
    out = tmp_path / "embeddings.csv"
    command = ["embed", "--model", str(model_dir), "--manifest", str(cohort), "--out", str(out),
               "--quiet"]
    with cli._exclusive(out):  # what a running embed holds
        assert cli.main(command) == 1
    assert f"--out {out}: another ldae embed (pid {os.getpid()}) is writing it" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main(command) == 0 and len(pd.read_csv(out)) == 6  # free again once it ends


def test_embed_redoes_rows_left_without_embedding_or_error(cohort, model_dir, tmp_path,
                                                           monkeypatch, capsys):
    out = tmp_path / "embeddings.csv"
    command = ["embed", "--model", str(model_dir), "--manifest", str(cohort), "--out", str(out),
               "--quiet"]
    original = cli._embed_chunk

    def loses_first_row(model, paths):
        table = original(model, paths)
        features = [column for column in table if column.startswith("ldaeencoder")]
        table.loc[table.index[0], features] = np.nan  # an embedding lost, with no error to say why
        return table

    monkeypatch.setattr(cli, "_embed_chunk", loses_first_row)
    assert cli.main(command) == 1
    assert "1 scans have neither an embedding nor an error" in capsys.readouterr().err
    assert not out.exists()
    embedded = []
    monkeypatch.setattr(cli, "_embed_chunk", lambda model, paths: embedded.extend(paths)
                        or original(model, paths))
    assert cli.main(command) == 0 and len(embedded) == 1  # only the lost row, redone
    table = pd.read_csv(out)
    features = [c for c in table if c.startswith("ldaeencoder")]
    assert table[features].notna().all().all()


def test_embed_checks_every_scan_against_the_models_grid(cohort, model_dir, tmp_path):
    # 2 scans in MNI space and 3 not registered (voxel (0, 0, 0) at the world origin),
    # in one chunk or one per chunk
    manifest = pd.read_csv(cohort, sep="\t").iloc[:5]
    paths = manifest_paths(cohort).iloc[:5].tolist()
    for k in (2, 3, 4):
        image = nib.load(paths[k])
        unregistered = tmp_path / f"unregistered{k}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), np.eye(4)), unregistered)
        paths[k] = str(unregistered)
    manifest["path"] = paths
    manifest.to_csv(tmp_path / "mixed.csv", index=False)
    for chunk in ("256", "1"):
        out = tmp_path / f"embeddings-{chunk}.csv"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SkippedScanWarning)
            assert cli.main(["embed", "--model", str(model_dir), "--manifest",
                             str(tmp_path / "mixed.csv"), "--out", str(out), "--chunk-size", chunk,
                             "--on-error", "skip", "--quiet"]) == 0
        table = pd.read_csv(out).set_index("path")
        errors = table["error"]
        assert errors[paths[:2]].isna().all()  # the right scans are embedded
        assert errors[paths[2:]].str.contains("covers 0% of the model grid").all()
