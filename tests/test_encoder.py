"""LDAEEncoder as a scikit-learn transformer: API conformance, persistence, resume
(scikit-learn's own checks: tests/test_sklearn_checks.py)."""

import math
import pickle

import joblib
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedGroupKFold, cross_validate
from sklearn.pipeline import Pipeline

import ldae.encoder
from ldae import LDAEEncoder
from ldae.exceptions import CheckpointError, InputError
from ldae.imaging import as_volume_dataset
from ldae.training import latents, stages
from ldae.training.checkpoint import load_checkpoint, save_checkpoint

from _small import GRID, small_cohort

FAST = dict(preset="tiny", image_shape=GRID, ae_epochs=2, diffusion_epochs=2,
            representation_epochs=2)
ONE_EPOCH = {**FAST, "ae_epochs": 1, "diffusion_epochs": 1, "representation_epochs": 1}


@pytest.fixture(scope="module")
def cohort():
    return small_cohort(6)


@pytest.fixture(scope="module")
def fitted(cohort):
    return LDAEEncoder(**FAST, random_state=0).fit(cohort.images)


# ---------------------------------------------------------------- conformance


def test_clone_and_no_attributes_set_in_init():
    model = LDAEEncoder(**FAST, random_state=3, embedding_dim=16)
    copy = clone(model)
    assert copy.get_params() == model.get_params()
    assert not [key for key in vars(LDAEEncoder()) if key.endswith("_")]
    assert not hasattr(LDAEEncoder(), "config_")


def test_params_unchanged_by_fit(cohort):
    model = LDAEEncoder(**FAST, random_state=0)
    before = model.get_params()
    model.fit(cohort.images)
    assert model.get_params() == before


def test_same_random_state_gives_identical_embeddings(cohort, fitted):
    again = LDAEEncoder(**FAST, random_state=0).fit(cohort.images)
    np.testing.assert_array_equal(again.transform(cohort.images), fitted.transform(cohort.images))
    other = LDAEEncoder(**FAST, random_state=1).fit(cohort.images)
    assert not np.allclose(other.transform(cohort.images), fitted.transform(cohort.images))


def test_large_cohort_latents_live_in_a_file_that_is_removed(cohort, fitted, tmp_path, monkeypatch):
    files = []
    memmap = np.memmap

    def recording_memmap(backing, **kwargs):
        files.append(backing.name)
        return memmap(backing, **kwargs)

    monkeypatch.setattr(latents, "IN_MEMORY_LIMIT_BYTES", 0)
    monkeypatch.setattr(latents.np, "memmap", recording_memmap)
    on_disk = LDAEEncoder(**FAST, random_state=0, cache_dir=tmp_path).fit(cohort.images)
    assert len(files) == 1 and files[0].startswith(str(tmp_path))
    assert not any(tmp_path.glob("ldae-latents-*"))
    np.testing.assert_array_equal(on_disk.transform(cohort.images), fitted.transform(cohort.images))
    assert on_disk.scale_factor_ == fitted.scale_factor_


def test_fit_transform_equals_fit_then_transform(cohort, fitted):
    embedded = LDAEEncoder(**FAST, random_state=0).fit_transform(cohort.images)
    np.testing.assert_array_equal(embedded, fitted.transform(cohort.images))


def test_transform_shape_dtype_and_feature_names(cohort, fitted):
    embedding = fitted.transform(cohort.images)
    assert embedding.shape == (len(cohort.images), fitted.config_.embedding_dim)
    assert embedding.dtype == np.float32 and np.isfinite(embedding).all()
    names = fitted.get_feature_names_out()
    assert len(names) == embedding.shape[1] and names[0] == "ldaeencoder0"
    assert embedding.std(axis=0).max() > 0, "every scan got the same embedding"


def test_unfitted_transform_raises_not_fitted(cohort):
    with pytest.raises(NotFittedError):
        LDAEEncoder(**FAST).transform(cohort.images)


def test_pickle_and_joblib_round_trip_give_identical_embeddings(cohort, fitted, tmp_path):
    expected = fitted.transform(cohort.images)
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.transform(cohort.images), expected)
    joblib.dump(fitted, tmp_path / "model.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "model.joblib").transform(cohort.images),
                                  expected)


def test_pickled_weights_are_on_the_cpu(fitted):
    state = fitted.__getstate__()
    devices = {tensor.device.type for weights in state["_weights"].values()
               for tensor in weights.values()}
    assert devices == {"cpu"}
    assert "autoencoder_" not in state


def test_save_and_load_without_pickled_code(cohort, fitted, tmp_path):
    path = tmp_path / "model.pt"
    fitted.save(path)
    loaded = LDAEEncoder.load(path)
    np.testing.assert_array_equal(loaded.transform(cohort.images), fitted.transform(cohort.images))
    assert loaded.get_params() == fitted.get_params()
    # write_atomically's temporaries are hidden files (".model.pt.<random>.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"], "a temporary file was left behind"
    # a file that would execute code when unpickled is refused
    torch.save({"format": "ldae.LDAEEncoder", "evil": _Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt holds Python objects") as refused:
        LDAEEncoder.load(tmp_path / "evil.pt")
    assert "weights_only=False" not in str(refused.value)  # never advise running the code
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        LDAEEncoder.load(truncated)


class _Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_model_file_of_an_older_version_is_refused_by_name(fitted, tmp_path):
    path = tmp_path / "old.ldae"
    fitted.save(path)
    payload = load_checkpoint(path)
    save_checkpoint({**payload, "version": 1}, path)
    with pytest.raises(CheckpointError, match=r"old.ldae was written by an older ldae \(file version 1\)"):
        LDAEEncoder.load(path)


def _altered(payload, *, params=None, fitted=None, drop=None):
    altered = {**payload, "params": {**payload["params"], **(params or {})},
               "fitted": {**payload["fitted"], **(fitted or {})}}
    altered.pop(drop, None)
    return altered


def test_a_checksum_valid_but_altered_model_file_is_refused_in_one_line(fitted, tmp_path,
                                                                       monkeypatch):
    path = tmp_path / "model.ldae"
    fitted.save(path)
    payload = load_checkpoint(path)
    config = payload["fitted"]["config"]
    cases = {
        "unknown parameter": (_altered(payload, params={"turbo": True}),
                              r"holds settings this ldae cannot use \(TypeError"),
        "no version": (_altered(payload, drop="version"),
                       r"incomplete model file \(missing or invalid: version\)"),
        "huge networks": (_altered(payload, fitted={"config": {**config,
                                                              "ae_channels": [4096, 8192, 8192]}}),
                          r"autoencoder weights do not match the networks"),
    }
    allocated = []
    monkeypatch.setattr(LDAEEncoder, "_restore_networks", lambda *args: allocated.append(1))
    for name, (content, message) in cases.items():
        save_checkpoint(content, path)
        with pytest.raises(CheckpointError, match=message):
            LDAEEncoder.load(path)
    assert allocated == []  # refused before any network was built for real


def test_a_model_file_from_before_code_timesteps_and_ae_batch_size_says_how_it_trained(
        fitted, tmp_path):
    path = tmp_path / "model.ldae"
    fitted.save(path)
    payload = load_checkpoint(path)
    config = dict(payload["fitted"]["config"], batch_size=3)
    del config["code_timesteps"], config["ae_batch_size"]
    save_checkpoint(_altered(payload, fitted={"config": config}), path)
    loaded = LDAEEncoder.load(path)
    assert loaded.config_.code_timesteps == loaded.estimator_.timesteps == 1000
    assert loaded.config_.ae_batch_size == 3  # stage 1 then trained at batch_size


def test_set_output_pandas_keeps_series_index(cohort, fitted, tmp_path):
    paths = []
    for number, volume in enumerate(cohort.images[:3]):
        path = tmp_path / f"scan{number}.nii.gz"
        nib.save(nib.Nifti1Image(volume, fitted.affine_), path)  # on the model's grid
        paths.append(str(path))
    series = pd.Series(paths, index=["a", "b", "c"], name="path")
    model = pickle.loads(pickle.dumps(fitted)).set_output(transform="pandas")
    frame = model.transform(series)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.index) == ["a", "b", "c"]
    assert list(frame.columns) == list(fitted.get_feature_names_out())


def test_bad_arguments_are_named(cohort):
    with pytest.raises(InputError, match="preset"):
        LDAEEncoder(preset="huge").fit(cohort.images)
    with pytest.raises(InputError, match="image_shape"):
        LDAEEncoder(**{**FAST, "image_shape": (15, 16, 16)}).fit(cohort.images)
    with pytest.raises(InputError, match="groups"):
        LDAEEncoder(**FAST).fit(cohort.images, groups=[0, 1])
    with pytest.raises(InputError, match="device"):
        LDAEEncoder(**FAST, device="tpu").fit(cohort.images)
    with pytest.raises(InputError, match="code_decorrelation"):
        LDAEEncoder(**FAST, code_decorrelation=-0.1).fit(cohort.images)


def test_stage_1_steps_at_ae_batch_size_and_the_later_stages_at_batch_size(cohort, monkeypatch):
    steps = {}

    def recording(stage):
        original = getattr(ldae.encoder, stage)

        def make(*args, steps_per_epoch, **kwargs):
            steps[stage] = steps_per_epoch
            return original(*args, steps_per_epoch=steps_per_epoch, **kwargs)
        return make

    for stage in ("autoencoder_stage", "diffusion_stage", "representation_stage"):
        monkeypatch.setattr(f"ldae.encoder.{stage}", recording(stage))
    LDAEEncoder(**ONE_EPOCH, batch_size=3, ae_batch_size=2).fit(cohort.images)
    scans = len(cohort.images)
    assert steps == {"autoencoder_stage": math.ceil(scans / 2),
                     "diffusion_stage": math.ceil(scans / 3),
                     "representation_stage": math.ceil(scans / 3)}
    with pytest.raises(InputError, match="ae_batch_size=0"):
        LDAEEncoder(**ONE_EPOCH, ae_batch_size=0).fit(cohort.images)


def test_a_grid_the_denoiser_cannot_take_is_refused_before_stage_1_trains(monkeypatch):
    scans = np.random.default_rng(0).random((4, 16, 20, 16), dtype=np.float32)
    trained = []
    monkeypatch.setattr("ldae.encoder.autoencoder_stage", lambda *a, **k: trained.append(1))
    with pytest.raises(InputError, match=r"latent spatial shape \(4, 5, 4\) cannot go through "
                                         r"a 2-level UNet"):
        LDAEEncoder(**{**FAST, "image_shape": (16, 20, 16)}).fit(scans)
    assert trained == []


def test_history_and_validation_on_held_out_subjects(cohort):
    subjects = cohort.frame.subject.to_numpy()
    model = LDAEEncoder(**FAST, random_state=0, validation_fraction=0.34).fit(cohort.images,
                                                                              groups=subjects)
    assert set(model.history_) == {"autoencoder", "diffusion", "representation"}
    for stage, history in model.history_.items():
        assert len(history["loss"]) == 2 and len(history["val_loss"]) == 2, stage
        assert np.isfinite(history["loss"]).all()
    # stage 3 also records how much the code steers the denoiser on the held-out subjects
    assert np.isfinite(model.history_["representation"]["val_loss_shuffled_codes"]).all()
    assert len(model.history_["representation"]["val_loss_shuffled_codes"]) == 2
    assert "val_loss_shuffled_codes" not in model.history_["diffusion"]
    held_out = len(cohort.images) - model.n_scans_
    assert 0 < held_out < len(cohort.images)


def test_autoencoder_codes_deviations_from_the_mean_training_scan(cohort, fitted):
    template = fitted.autoencoder_.template[0, 0].numpy()
    scans = as_volume_dataset(cohort.images, fitted.preprocessing_)
    mean = np.mean([scans[i] for i in range(len(scans))], axis=0)
    np.testing.assert_allclose(template, mean, atol=1e-6)
    plain = LDAEEncoder(**FAST, ae_template=False, random_state=0).fit(cohort.images[:4])
    assert not hasattr(plain.autoencoder_, "template")


def test_zero_representation_epochs_give_the_untrained_control_of_the_same_fit(cohort, fitted):
    control = LDAEEncoder(**{**FAST, "representation_epochs": 0}, random_state=0).fit(cohort.images)
    for name in ("autoencoder_", "unet_"):  # the same stages 1 and 2 ...
        for key, value in getattr(fitted, name).state_dict().items():
            assert torch.equal(value, getattr(control, name).state_dict()[key]), (name, key)
    again = LDAEEncoder(**{**FAST, "representation_epochs": 0}, random_state=0).fit(cohort.images)
    trained, untrained = (dict(model.semantic_encoder_.named_parameters()) for model in (fitted, control))
    # ... and the encoder's initial weights, which stage 3 then changed
    assert all(torch.equal(value, dict(again.semantic_encoder_.named_parameters())[key])
               for key, value in untrained.items())
    assert any(not torch.equal(value, trained[key]) for key, value in untrained.items())
    codes = control.transform(cohort.images)
    assert codes.shape == (len(cohort.images), control.config_.embedding_dim) and np.isfinite(codes).all()


# -------------------------------------------------------- pipelines & resume


def test_cross_validate_pipeline_on_synthetic_cohort():
    cohort = small_cohort(18, random_state=1)
    frame = cohort.frame
    label = (frame.diagnosis != "CN").to_numpy().astype(int)
    pipeline = Pipeline([("ldae", LDAEEncoder(**ONE_EPOCH, random_state=0)),
                         ("clf", LogisticRegression(max_iter=1000))])
    result = cross_validate(pipeline, cohort.images, label, groups=frame.subject,
                            cv=StratifiedGroupKFold(3), scoring="roc_auc")
    assert len(result["test_score"]) == 3
    assert np.isfinite(result["test_score"]).all()


def test_grid_search_over_an_encoder_parameter(cohort):
    label = np.arange(len(cohort.images)) % 2
    search = GridSearchCV(
        Pipeline([("ldae", LDAEEncoder(**ONE_EPOCH, random_state=0)),
                  ("clf", LogisticRegression())]),
        {"ldae__embedding_dim": [8, 16]}, cv=GroupKFold(2), scoring="accuracy",
    )
    search.fit(cohort.images, label, groups=cohort.frame.subject)
    assert search.best_params_["ldae__embedding_dim"] in (8, 16)
    assert search.best_estimator_.named_steps["ldae"].transform(cohort.images[:2]).shape[1] == \
        search.best_params_["ldae__embedding_dim"]


class _Interrupted(Exception):
    pass


def test_fit_resumes_after_an_interruption(cohort, tmp_path, monkeypatch):
    settings = dict(**FAST, random_state=0, checkpoint_dir=tmp_path)
    original = stages.diffusion_stage

    def crash(*args, **kwargs):
        raise _Interrupted

    monkeypatch.setattr("ldae.encoder.diffusion_stage", crash)
    with pytest.raises(_Interrupted):
        LDAEEncoder(**settings).fit(cohort.images)
    assert (tmp_path / "autoencoder.pt").exists()

    calls = []
    monkeypatch.setattr("ldae.encoder.diffusion_stage", original)
    monkeypatch.setattr("ldae.encoder.autoencoder_stage",
                        lambda *a, **k: calls.append(1) or stages.autoencoder_stage(*a, **k))
    resumed = LDAEEncoder(**settings).fit(cohort.images)
    assert (tmp_path / "representation.pt").exists()
    uninterrupted = LDAEEncoder(**FAST, random_state=0).fit(cohort.images)
    np.testing.assert_allclose(resumed.transform(cohort.images),
                               uninterrupted.transform(cohort.images), atol=1e-5)
    assert resumed.history_["autoencoder"] == uninterrupted.history_["autoencoder"]


def test_checkpoints_of_other_settings_are_not_reused(cohort, tmp_path):
    LDAEEncoder(**FAST, random_state=0, checkpoint_dir=tmp_path).fit(cohort.images)
    stamp = (tmp_path / "autoencoder.pt").stat().st_mtime_ns
    with pytest.warns(UserWarning, match=r"autoencoder\.pt belongs to another fit \(these differ: "
                                         r"ae_lr\); the autoencoder stage is trained again"):
        LDAEEncoder(**FAST, random_state=0, checkpoint_dir=tmp_path, ae_lr=5e-4).fit(cohort.images)
    assert (tmp_path / "autoencoder.pt").stat().st_mtime_ns != stamp


def test_a_fit_that_changes_only_stage_3_reuses_the_checkpoints_of_stages_1_and_2(cohort, fitted,
                                                                                   tmp_path):
    trained = LDAEEncoder(**FAST, random_state=0, checkpoint_dir=tmp_path).fit(cohort.images)
    stamps = {stage: (tmp_path / f"{stage}.pt").stat().st_mtime_ns
              for stage in ("autoencoder", "diffusion", "representation")}
    control = LDAEEncoder(**{**FAST, "representation_epochs": 0}, random_state=0,
                          checkpoint_dir=tmp_path).fit(cohort.images)
    for stage in ("autoencoder", "diffusion"):
        assert (tmp_path / f"{stage}.pt").stat().st_mtime_ns == stamps[stage]
        assert control.fit_seconds_[stage] == trained.fit_seconds_[stage]
    # the fit's own stage 3 stays: fitted again, it loads every stage
    assert (tmp_path / "representation.pt").stat().st_mtime_ns == stamps["representation"]
    again = LDAEEncoder(**FAST, random_state=0, checkpoint_dir=tmp_path).fit(cohort.images)
    assert again.fit_seconds_ == trained.fit_seconds_
    # the same control as a fit from scratch
    scratch = LDAEEncoder(**{**FAST, "representation_epochs": 0}, random_state=0).fit(cohort.images)
    np.testing.assert_array_equal(control.transform(cohort.images), scratch.transform(cohort.images))


# ----------------------------------------------------------------- presets


def test_paper_preset_builds_the_papers_networks_and_a_full_size_scan_flows_through_them():
    # fitted and embedding through the public API on a 32^3 grid (the paper's 128x160x128
    # takes 80 s on two CPU cores: bench_inference measures it) ...
    model = LDAEEncoder(preset="paper", image_shape=(32, 32, 32), ae_epochs=0, diffusion_epochs=0,
                        representation_epochs=0, random_state=0, device="cpu")
    scan = np.random.default_rng(0).random((1, 32, 32, 32), dtype=np.float32)
    model.fit(scan)
    counts = {name: sum(p.numel() for p in getattr(model, name).parameters())
              for name in ("autoencoder_", "unet_", "semantic_encoder_", "estimator_")}
    print("paper preset parameter counts:", counts)
    assert 1e7 < counts["autoencoder_"] < 1e8
    assert 1e8 < counts["unet_"] < 1e9
    assert model.transform(scan).shape == (1, 768)
    # ... and the networks take a full-size scan: shapes only, on the meta device
    full_size = torch.empty(1, 1, 128, 160, 128, device="meta")
    latent, _ = model.autoencoder_.to("meta").encode(full_size)
    assert latent.shape == (1, 3, 16, 20, 16)
    timestep = torch.zeros(1, dtype=torch.long, device="meta")
    noise = model.unet_.to("meta")(latent, timesteps=timestep)
    assert noise.shape == latent.shape
    assert model.semantic_encoder_.to("meta")(full_size).shape == (1, 768)


def test_identical_training_scans_warn_and_keep_embeddings_in_scale(cohort):
    # 4 copies of one scan: every code dimension has ~0 spread across the training set
    copies = np.repeat(cohort.images[:1], 4, axis=0)
    # fp32: under "auto" transform encodes in bf16 and the fit caches fp32 latents, which
    # puts the training scan 0.03 from the centre in these near-zero-spread units
    with pytest.warns(UserWarning, match=r"of 32 embedding dimensions barely vary"):
        model = LDAEEncoder(**FAST, embedding_dim=32, random_state=0, precision="fp32",
                            validation_fraction=0).fit(copies)
    embeddings = model.transform(np.concatenate([copies[:1], cohort.images[1:3]]))
    assert np.isfinite(embeddings).all()
    np.testing.assert_allclose(embeddings[0], 0, atol=1e-3)  # the training scan: centred
    # other scans: in units of the codes' own size, not divided by ~0 spread
    assert np.abs(embeddings).max() < 10
