"""Tests of ldae.datasets.make_synthetic_cohort: truth in the table AND in the images."""

import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
import torch
from scipy import stats
from scipy.spatial.distance import cdist

from ldae.datasets import _cohort, make_synthetic_cohort
from ldae.datasets._template import HIPPOCAMPUS_CENTRES_MM, VENTRICLE_REGION_MM
from ldae.exceptions import InputError

SHAPE = (32, 40, 32)
COHORT_SHAPE = (40, 50, 40)  # 4.4 mm voxels: enough to see the ventricles widen
VISITS = (0, 6, 12, 24, 36, 48)
FRAME_COLUMNS = ["subject", "session", "months", "age", "sex", "diagnosis",
                 "baseline_diagnosis", "converter", "severity", "site", "ventricle_volume",
                 "hippocampus_volume", "grey_matter_volume", "intracranial_volume"]
# Darker than any site's grey matter (>= 0.42, bias about +-10 %), brighter than its CSF.
CSF_LIKE = 0.35


@pytest.fixture(scope="module")
def cohort():
    return make_synthetic_cohort(60, shape=COHORT_SHAPE, visit_months=VISITS, random_state=0)


def world_coordinates(affine, shape):
    voxels = np.indices(shape).reshape(3, -1)
    return (affine[:3, :3] @ voxels + affine[:3, 3:]).reshape(3, *shape)


def box_mask(world, limits):
    inside = np.ones(world.shape[1:], dtype=bool)
    for coordinate, (low, high) in zip(world, limits):
        inside &= (coordinate >= low) & (coordinate <= high)
    return inside


def hippocampal_mask(world):
    inside = np.zeros(world.shape[1:], dtype=bool)
    for centre in HIPPOCAMPUS_CENTRES_MM:
        offset = world - np.reshape(centre, (3, 1, 1, 1))
        inside |= ((offset / np.reshape([10.0, 22.0, 12.0], (3, 1, 1, 1))) ** 2).sum(0) <= 1
    return inside


# ------------------------------------------------------------ reproducibility


def test_same_seed_gives_identical_cohort_and_another_seed_a_different_one():
    threads = torch.get_num_threads()
    first = make_synthetic_cohort(4, shape=SHAPE, random_state=7)
    again = make_synthetic_cohort(4, shape=SHAPE, random_state=7, n_jobs=2)
    other = make_synthetic_cohort(4, shape=SHAPE, random_state=8)
    assert torch.get_num_threads() == threads  # torch's setting is restored
    np.testing.assert_array_equal(first.images, again.images)
    pd.testing.assert_frame_equal(first.frame, again.frame)
    assert not first.frame["age"].equals(other.frame["age"])
    n = min(len(first.images), len(other.images))
    assert np.abs(first.images[:n] - other.images[:n]).mean() > 0.01


def test_generator_seed_is_reproducible_and_subjects_do_not_depend_on_the_grid():
    coarse = make_synthetic_cohort(3, shape=(24, 30, 24), random_state=np.random.default_rng(5))
    fine = make_synthetic_cohort(3, shape=SHAPE, random_state=np.random.default_rng(5))
    table = ["subject", "session", "months", "age", "sex", "diagnosis", "severity", "site"]
    pd.testing.assert_frame_equal(coarse.frame[table], fine.frame[table])
    # Same anatomy at two resolutions: the true volumes agree to a few percent (thin
    # ventricles are left out: their partial volume depends on the voxel size).
    for column in ("hippocampus_volume", "grey_matter_volume", "intracranial_volume"):
        np.testing.assert_allclose(coarse.frame[column], fine.frame[column], rtol=0.03)


# ---------------------------------------------------------------- the table


def test_bunch_images_affine_and_frame_are_consistent(cohort):
    images, frame, affine = cohort.images, cohort.frame, cohort.affine
    assert images.dtype == np.float32 and images.shape == (len(frame), *COHORT_SHAPE)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert (images == 0).mean() > 0.2 and images.max() > 0.6  # background and white matter
    assert list(frame.columns) == FRAME_COLUMNS
    assert frame.index.equals(pd.RangeIndex(len(frame)))
    # RAS, isotropic 176 / 40 = 4.4 mm voxels, grid centred on the brain.
    np.testing.assert_allclose(np.diag(affine)[:3], 4.4)
    centre = affine @ np.r_[(np.asarray(COHORT_SHAPE) - 1) / 2.0, 1.0]
    np.testing.assert_allclose(centre[:3], [0.0, -17.0, 5.0], atol=1e-6)
    assert "CN / MCI / AD" in cohort.DESCR


def test_labels_ages_and_visit_grid(cohort):
    frame = cohort.frame
    assert frame["subject"].str.fullmatch(r"sub-\d{3}").all()
    assert frame["subject"].nunique() == 60
    assert (frame["session"] == [f"ses-M{m:02d}" for m in frame["months"]]).all()
    assert set(frame["sex"]) == {"F", "M"} and frame["site"].nunique() == 3
    for _, scans in frame.groupby("subject"):
        months = scans["months"].tolist()
        assert months == list(VISITS[: len(months)])  # baseline first, drop-out, no gaps
        baseline_age = scans["age"].iloc[0]
        np.testing.assert_allclose(scans["age"], baseline_age + scans["months"] / 12.0)
        assert 55 <= baseline_age <= 90
    visits_per_subject = frame.groupby("subject").size()
    assert visits_per_subject.min() == 1 and visits_per_subject.max() == len(VISITS)


def test_dropout_extremes():
    everyone_stays = make_synthetic_cohort(3, shape=SHAPE, dropout=0.0, random_state=0)
    assert (everyone_stays.frame.groupby("subject").size() == len(VISITS)).all()
    everyone_leaves = make_synthetic_cohort(3, shape=SHAPE, dropout=1.0, random_state=0)
    assert (everyone_leaves.frame["months"] == 0).all()


def test_diagnosis_follows_severity_and_only_mci_converters_change(cohort):
    frame = cohort.frame
    assert set(frame["diagnosis"]) == {"CN", "MCI", "AD"}
    bands = {"CN": (0.0, 0.2), "MCI": (0.2, 0.5), "AD": (0.5, 1.0 + 1e-12)}
    for diagnosis, (low, high) in bands.items():
        severity = frame.loc[frame["diagnosis"] == diagnosis, "severity"]
        assert severity.between(low, high, inclusive="left").all()
    for _, scans in frame.groupby("subject"):
        assert (np.diff(scans["severity"]) >= 0).all()
        changed = scans["diagnosis"] != scans["baseline_diagnosis"]
        assert scans["converter"].iloc[0] == changed.any()
        if changed.any():
            assert scans["baseline_diagnosis"].iloc[0] == "MCI"
            assert not changed.iloc[0]
            assert (scans["diagnosis"][changed] == "AD").all()
            assert changed[changed.idxmax():].all()  # AD from the conversion visit on
    assert frame.groupby("subject")["converter"].first().sum() >= 1


def test_every_mci_subject_converts_when_asked_to():
    cohort = make_synthetic_cohort(4, shape=SHAPE, diagnosis_proportions=(0, 1, 0),
                                   conversion_rate=1.0, dropout=0.0, random_state=1)
    frame = cohort.frame
    assert frame.groupby("subject")["converter"].all().all()
    assert (frame.groupby("subject")["diagnosis"].last() == "AD").all()


def test_ad_is_more_likely_in_older_subjects():
    subjects, _ = _cohort.sample_cohort(
        np.random.default_rng(0), 4000, age_range=(55.0, 90.0),
        diagnosis_proportions=(0.4, 0.35, 0.25), visit_months=(0,), dropout=0.0,
        conversion_rate=0.0, n_sites=1,
    )
    is_ad, age = subjects["baseline_diagnosis"] == "AD", subjects["baseline_age"]
    assert is_ad[age > 80].mean() > 1.5 * is_ad[age < 65].mean()


# ------------------------------------------------------- atrophy in the table


def test_true_volumes_follow_age_and_diagnosis(cohort):
    baseline = cohort.frame[cohort.frame["months"] == 0]
    ventricles = smf.ols("ventricle_volume ~ age + C(diagnosis)", baseline).fit()
    assert ventricles.params["age"] > 0 and ventricles.pvalues["age"] < 0.01
    assert ventricles.params["C(diagnosis)[T.AD]"] > 0
    assert ventricles.pvalues["C(diagnosis)[T.AD]"] < 0.01
    hippocampi = smf.ols("hippocampus_volume ~ age + C(diagnosis)", baseline).fit()
    assert hippocampi.params["C(diagnosis)[T.AD]"] < 0
    assert hippocampi.pvalues["C(diagnosis)[T.AD]"] < 0.01
    grey = smf.ols("grey_matter_volume ~ age + intracranial_volume", baseline).fit()
    assert grey.params["age"] < 0 and grey.pvalues["age"] < 0.01


def test_atrophy_progresses_within_every_subject(cohort):
    for _, scans in cohort.frame.groupby("subject"):
        assert (np.diff(scans["ventricle_volume"]) > 0).all()
        assert (np.diff(scans["hippocampus_volume"]) < 0).all()
        assert (np.diff(scans["grey_matter_volume"]) < 0).all()
        # Atrophy redistributes tissue, it does not change the head.
        head = scans["intracranial_volume"]
        np.testing.assert_allclose(head, head.iloc[0], rtol=1e-3)


# ------------------------------------------------------ atrophy in the images


def test_dark_voxels_in_the_central_region_track_ventricle_volume_and_severity(cohort):
    world = world_coordinates(cohort.affine, COHORT_SHAPE)
    central = box_mask(world, VENTRICLE_REGION_MM)
    frame = cohort.frame.assign(
        dark_ml=((cohort.images < CSF_LIKE) & central).sum(axis=(1, 2, 3)) * 4.4**3 / 1000
    )
    assert stats.spearmanr(frame["dark_ml"], frame["ventricle_volume"])[0] > 0.7
    fit = smf.ols("dark_ml ~ age + severity", frame[frame["months"] == 0]).fit()
    assert fit.params["severity"] > 0 and fit.pvalues["severity"] < 0.01
    assert fit.params["age"] > 0 and fit.pvalues["age"] < 0.01


def test_hippocampal_atrophy_darkens_the_medial_temporal_lobe():
    # Same seed with and without atrophy: same anatomy, bias fields and noise, so the
    # difference of the images is the atrophy alone.
    kwargs = {"shape": SHAPE, "random_state": 3}
    atrophied = make_synthetic_cohort(20, **kwargs)
    intact = make_synthetic_cohort(20, atrophy_strength=0.0, **kwargs)
    region = hippocampal_mask(world_coordinates(atrophied.affine, SHAPE))
    darkening = ((intact.images - atrophied.images) * region).sum(axis=(1, 2, 3))
    lost_ml = intact.frame["hippocampus_volume"] - atrophied.frame["hippocampus_volume"]
    assert (lost_ml > 0).all() and (darkening > 0).all()
    assert stats.spearmanr(darkening, lost_ml)[0] > 0.7
    is_ad = atrophied.frame["diagnosis"] == "AD"
    assert darkening[is_ad].mean() > 1.5 * darkening[atrophied.frame["diagnosis"] == "CN"].mean()


def test_subjects_have_their_own_anatomy_shared_by_their_visits(cohort):
    frame, images = cohort.frame, cohort.images.reshape(len(cohort.images), -1)
    baseline = frame.index[frame["months"] == 0].to_numpy()
    follow_up = frame.index[frame["months"] == VISITS[1]].to_numpy()
    within = np.abs(images[follow_up] - images[follow_up - 1]).mean(axis=1)
    between = np.abs(images[baseline[1:]] - images[baseline[:-1]]).mean(axis=1)
    assert np.median(between) > 2 * np.median(within)
    # Each 6-month scan is closest to its own subject's baseline among all baselines.
    distances = cdist(images[follow_up], images[baseline], "sqeuclidean")
    nearest = frame["subject"].to_numpy()[baseline[distances.argmin(axis=1)]]
    assert (nearest == frame["subject"].to_numpy()[follow_up]).mean() >= 0.9


def test_without_atrophy_noise_and_bias_visits_are_identical_and_subjects_differ():
    cohort = make_synthetic_cohort(3, shape=SHAPE, dropout=0.0, atrophy_strength=0.0,
                                   noise=0.0, bias_field=0.0, random_state=2)
    images = cohort.images.reshape(3, len(VISITS), -1)
    np.testing.assert_allclose(images, np.broadcast_to(images[:, :1], images.shape), atol=1e-6)
    assert np.abs(images[0, 0] - images[1, 0]).mean() > 0.01
    assert np.abs(images[1, 0] - images[2, 0]).mean() > 0.01


# --------------------------------------------------------------- writing


def test_output_dir_writes_a_bids_tree_with_tables(tmp_path):
    cohort = make_synthetic_cohort(3, shape=SHAPE, random_state=4, output_dir=tmp_path)
    frame = cohort.frame
    assert list(frame.columns) == [*FRAME_COLUMNS, "path"]
    for row, image in zip(frame.itertuples(), cohort.images):
        name = f"{row.subject}_{row.session}_T1w.nii.gz"
        expected = tmp_path / row.subject / row.session / "anat" / name
        assert row.path == str(expected.resolve())
        written = nib.load(row.path)
        assert written.get_data_dtype() == np.float32
        np.testing.assert_array_equal(written.get_fdata(dtype=np.float32), image)
        np.testing.assert_allclose(written.affine, cohort.affine)

    participants = pd.read_csv(tmp_path / "participants.tsv", sep="\t")
    assert list(participants.columns) == ["participant_id", "sex", "age", "baseline_diagnosis",
                                          "site", "converter"]
    baseline = frame[frame["months"] == 0]
    assert participants["participant_id"].tolist() == baseline["subject"].tolist()
    np.testing.assert_allclose(participants["age"], baseline["age"])

    for subject, scans in frame.groupby("subject"):
        sessions = pd.read_csv(tmp_path / subject / f"{subject}_sessions.tsv", sep="\t")
        assert sessions["session_id"].tolist() == scans["session"].tolist()
        np.testing.assert_allclose(sessions["hippocampus_volume"], scans["hippocampus_volume"])

    manifest = pd.read_csv(tmp_path / "manifest.tsv", sep="\t")
    assert list(manifest.columns) == ["subject", "session", "path", *FRAME_COLUMNS[2:]]
    assert [str((tmp_path / path).resolve()) for path in manifest["path"]] == frame["path"].tolist()
    assert not manifest["path"].str.startswith("/").any()
    assert manifest["diagnosis"].tolist() == frame["diagnosis"].astype(str).tolist()
    np.testing.assert_allclose(manifest["ventricle_volume"], frame["ventricle_volume"])
    assert (tmp_path / "dataset_description.json").is_file()
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_writing_twice_in_parallel_replaces_files(tmp_path):
    first = make_synthetic_cohort(2, shape=SHAPE, random_state=5, output_dir=tmp_path, n_jobs=2)
    second = make_synthetic_cohort(2, shape=SHAPE, random_state=6, output_dir=tmp_path, n_jobs=2)
    path = second.frame["path"].iloc[0]
    assert path == first.frame["path"].iloc[0]
    np.testing.assert_array_equal(nib.load(path).get_fdata(dtype=np.float32), second.images[0])


# ------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"n_subjects": 0}, "n_subjects"),
        ({"n_subjects": 2.5}, "n_subjects"),
        ({"shape": (32, 40)}, "shape"),
        ({"shape": (32, 40, -1)}, "shape"),
        ({"shape": (4, 4, 4)}, "shape"),
        ({"field_of_view": (100.0, 0.0, 100.0)}, "field_of_view"),
        ({"age_range": (80, 60)}, "age_range"),
        ({"diagnosis_proportions": (0.5, 0.5, 0.5)}, "diagnosis_proportions"),
        ({"diagnosis_proportions": (1.0, 0.0)}, "diagnosis_proportions"),
        ({"visit_months": (6, 12)}, "visit_months"),
        ({"visit_months": (0, 12, 12)}, "visit_months"),
        ({"dropout": 1.5}, "dropout"),
        ({"conversion_rate": -0.1}, "conversion_rate"),
        ({"n_sites": 0}, "n_sites"),
        ({"noise": -0.01}, "noise"),
        ({"deformation_mm": float("nan")}, "deformation_mm"),
        ({"random_state": -1}, "random_state"),
        ({"random_state": "seed"}, "random_state"),
    ],
)
def test_bad_arguments_raise_input_error_naming_them(kwargs, argument):
    arguments = {"n_subjects": 2, "shape": SHAPE} | kwargs
    n_subjects = arguments.pop("n_subjects")
    with pytest.raises(InputError, match=re.escape(argument)):
        make_synthetic_cohort(n_subjects, **arguments)


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    not_a_folder = tmp_path / "cohort"
    not_a_folder.write_text("")
    with pytest.raises(InputError, match="output_dir"):
        make_synthetic_cohort(1, shape=SHAPE, output_dir=not_a_folder)
