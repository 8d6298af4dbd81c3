"""The image input layer: every form of X gives the same volumes; bad X is named."""

import gzip
import os
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse
import torch
from nibabel.arrayproxy import ArrayProxy

from ldae.exceptions import InputError
from ldae.imaging import Preprocessing, as_volume_dataset, read_manifest

SHAPE = (20, 24, 20)
# RAS, 1.5 mm voxels, origin away from voxel 0.
AFFINE = np.array(
    [[1.5, 0, 0, -14.0], [0, 1.5, 0, -20.0], [0, 0, 1.5, -9.0], [0, 0, 0, 1]], dtype=float
)


def scans(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.gamma(2.0, 50.0, size=(n, *SHAPE))).astype(np.float32)


def write(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(data, affine), path)
    return str(path)


@pytest.fixture
def cohort(tmp_path):
    volumes = scans()
    paths = [write(tmp_path / f"scan{i}.nii.gz", v) for i, v in enumerate(volumes)]
    return volumes, paths


def read_all(dataset):
    return np.stack([dataset[i] for i in range(len(dataset))])


def test_paths_images_series_and_arrays_give_identical_volumes(cohort):
    volumes, paths = cohort
    preprocessing = Preprocessing(shape=(16, 28, 21))
    forms = {
        "str": paths,
        "Path": [Path(p) for p in paths],
        "tuple": tuple(paths),
        "array of str": np.array(paths),
        "images": [nib.load(p) for p in paths],
        "Series": pd.Series(paths, index=["s1", "s2", "s3"]),
    }
    arrays = {
        "array": volumes,
        "array with channel": volumes[:, None],
        "list of arrays": list(volumes),
    }
    datasets = {form: as_volume_dataset(X, preprocessing) for form, X in forms.items()}
    datasets.update(
        {form: as_volume_dataset(X, preprocessing, affine=AFFINE) for form, X in arrays.items()}
    )
    reference = read_all(datasets["str"])
    assert reference.shape == (3, 16, 28, 21) and reference.dtype == np.float32
    assert reference.min() == 0.0 and reference.max() == 1.0
    for form, dataset in datasets.items():
        assert len(dataset) == 3 and dataset.shape == (16, 28, 21), form
        np.testing.assert_array_equal(read_all(dataset), reference, err_msg=form)
        np.testing.assert_array_equal(dataset.affine, datasets["str"].affine, err_msg=form)
    assert list(datasets["Series"].index) == ["s1", "s2", "s3"]
    assert datasets["str"].index is None
    assert datasets["str"].names == paths
    assert datasets["images"].names == ["X[0]", "X[1]", "X[2]"]


def test_arrays_default_to_a_grid_of_the_preprocessing_voxel_size():
    assert np.array_equal(as_volume_dataset(scans(1)).affine, np.eye(4))
    dataset = as_volume_dataset(scans(1), Preprocessing(voxel_size=2.0))
    assert np.array_equal(dataset.affine, np.diag([2.0, 2.0, 2.0, 1.0]))
    assert dataset.shape == SHAPE  # taken as already at 2 mm: not resampled


def test_left_right_flipped_copy_preprocesses_to_the_same_array(tmp_path):
    data = scans(1)[0]
    flip_x = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip_x[0, 3] = SHAPE[0] - 1
    original = write(tmp_path / "ras.nii.gz", data)
    flipped = write(tmp_path / "las.nii.gz", data[::-1], AFFINE @ flip_x)
    dataset = as_volume_dataset([original, flipped], Preprocessing(shape=(18, 25, 19)))
    np.testing.assert_array_equal(dataset[0], dataset[1])
    np.testing.assert_array_equal(dataset.affines[0], dataset.affines[1])


def test_any_axis_order_and_flips_preprocess_to_the_same_array(tmp_path):
    image = nib.Nifti1Image(scans(1)[0], AFFINE)
    to_pil = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt("PIL")
    )
    reoriented = image.as_reoriented(to_pil)
    assert nib.aff2axcodes(reoriented.affine) == ("P", "I", "L")
    dataset = as_volume_dataset([image, reoriented], Preprocessing(shape=(16, 26, 20)))
    np.testing.assert_array_equal(dataset[0], dataset[1])
    np.testing.assert_allclose(dataset.affines[0], dataset.affines[1])


def test_target_affine_keeps_every_voxel_at_its_world_coordinate(tmp_path):
    data = np.zeros(SHAPE, np.float32)
    data[5, 7, 9] = 1.0
    image = nib.Nifti1Image(data, AFFINE)
    to_lpi = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt("LPI")
    )
    path = write(
        tmp_path / "lpi.nii.gz",
        np.asarray(image.as_reoriented(to_lpi).dataobj),
        image.as_reoriented(to_lpi).affine,
    )
    for shape in [(16, 20, 17), (25, 30, 23)]:  # crop, pad
        dataset = as_volume_dataset([path], Preprocessing(shape=shape, percentiles=(0, 100)))
        bright = np.unravel_index(np.argmax(dataset[0]), shape)
        np.testing.assert_allclose(dataset.affine @ [*bright, 1], AFFINE @ [5, 7, 9, 1])


def test_building_decodes_nothing_and_an_item_decodes_only_itself(cohort, monkeypatch):
    decoded = []
    original = ArrayProxy.__array__
    monkeypatch.setattr(
        ArrayProxy, "__array__", lambda self, *a, **k: decoded.append(1) or original(self, *a, **k)
    )
    dataset = as_volume_dataset(cohort[1], Preprocessing())
    assert decoded == []
    dataset[2]
    assert len(decoded) == 1


def test_dataset_pickles_and_streams_through_a_dataloader_with_workers(cohort):
    dataset = as_volume_dataset(pd.Series(cohort[1]), Preprocessing(shape=(16, 16, 16)))
    clone = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(clone[1], dataset[1])
    assert clone.names == dataset.names
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
    batches = torch.cat(list(loader))
    np.testing.assert_array_equal(batches.numpy(), read_all(dataset))


def test_a_single_volume_4d_image_is_its_3d_volume(tmp_path):
    data = scans(1)[0]
    dataset = as_volume_dataset(
        [write(tmp_path / "3d.nii.gz", data), write(tmp_path / "4d.nii.gz", data[..., None])]
    )
    np.testing.assert_array_equal(dataset[0], dataset[1])


def test_nan_voxels_raise_by_default_and_become_zero_on_request(tmp_path):
    data = scans(1)[0]
    data[3, 4, 5] = np.nan
    data[6, 7, 8] = np.inf
    path = write(tmp_path / "holes.nii.gz", data)
    with pytest.raises(InputError, match=r"holes\.nii\.gz: 2 NaN or infinite"):
        as_volume_dataset([path])[0]
    repaired = as_volume_dataset([path], Preprocessing(nan_policy="zero"))[0]
    zeroed = np.nan_to_num(data, nan=0.0, posinf=0.0)
    np.testing.assert_array_equal(repaired, as_volume_dataset(zeroed[None])[0])


def test_the_fingerprint_follows_the_scans_and_the_settings(cohort):
    volumes, paths = cohort
    fingerprint = as_volume_dataset(paths).fingerprint()
    assert as_volume_dataset(paths).fingerprint() == fingerprint
    # Images read from files count as their files: nothing is decoded.
    assert as_volume_dataset([nib.load(p) for p in paths]).fingerprint() == fingerprint
    assert as_volume_dataset(paths, Preprocessing(shape=(16, 16, 16))).fingerprint() != fingerprint
    status = os.stat(paths[1])
    os.utime(paths[1], ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    assert as_volume_dataset(paths).fingerprint() != fingerprint

    of_arrays = as_volume_dataset(volumes).fingerprint()
    assert as_volume_dataset(volumes.copy()).fingerprint() == of_arrays
    changed = volumes.copy()
    changed[2, 3, 4, 5] += 1
    assert as_volume_dataset(changed).fingerprint() != of_arrays


# ---- bad input: an InputError that names the item, raised early when possible


def truncate(path, keep):
    content = Path(path).read_bytes()
    Path(path).write_bytes(content[: int(len(content) * keep)])


def corrupt_gzip_stream(path):
    content = bytearray(Path(path).read_bytes())
    middle = len(content) // 2
    content[middle : middle + 64] = np.random.default_rng(1).bytes(64)
    Path(path).write_bytes(bytes(content))


def test_a_missing_file_is_named_when_the_dataset_is_built(tmp_path, cohort):
    missing = str(tmp_path / "nowhere.nii.gz")
    with pytest.raises(InputError, match=r"nowhere\.nii\.gz: does not exist"):
        as_volume_dataset([cohort[1][0], missing])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: (d / "folder.nii").mkdir() or d / "folder.nii", "is a directory"),
        (lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt", "not a readable"),
        (lambda d: (d / "fake.nii.gz").write_text("hello") and d / "fake.nii.gz", "not a readable"),
        (lambda d: (d / "fake.nii").write_bytes(b"\0" * 400) and d / "fake.nii", "not a readable"),
    ],
    ids=["directory", "text file", "not gzip", "bad header"],
)
def test_what_is_not_an_image_is_named_when_the_dataset_is_built(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(InputError, match=f"{path.name}.*{message}|{message}.*{path.name}"):
        as_volume_dataset([str(path)])


def test_a_truncated_uncompressed_file_is_named_when_the_dataset_is_built(tmp_path):
    path = write(tmp_path / "cut.nii", scans(1)[0])
    truncate(path, 0.5)
    with pytest.raises(InputError, match=r"cut\.nii: truncated"):
        as_volume_dataset([path])


@pytest.mark.parametrize(
    "damage",
    [lambda p: truncate(p, 0.6), corrupt_gzip_stream],
    ids=["truncated gzip", "corrupted gzip"],
)
def test_a_damaged_gzip_is_named_when_read(tmp_path, damage):
    path = write(tmp_path / "damaged.nii.gz", scans(1)[0])
    damage(path)
    with gzip.open(path) as file:  # the header still reads
        file.read(348)
    dataset = as_volume_dataset([path])
    with pytest.raises(InputError, match=r"damaged\.nii\.gz: (truncated|corrupt) gzip"):
        dataset[0]


@pytest.mark.parametrize(
    "data, message",
    [
        (np.ones((20, 24, 20, 3), np.float32), "4D image with 3 volumes"),
        (np.ones((20, 24), np.float32), "2D image"),
        (np.ones((20, 24, 1), np.float32), "2D image"),
    ],
    ids=["4D", "2D", "flat 3D"],
)
def test_images_that_are_not_one_3d_volume_are_named_when_built(tmp_path, data, message):
    path = write(tmp_path / "odd.nii.gz", data, np.eye(4))
    with pytest.raises(InputError, match=rf"odd\.nii\.gz: {message}"):
        as_volume_dataset([path])


def test_a_constant_image_is_named_when_read(tmp_path):
    path = write(tmp_path / "flat.nii.gz", np.full(SHAPE, 7.0, np.float32))
    with pytest.raises(InputError, match=r"flat\.nii\.gz: the image is constant"):
        as_volume_dataset([path])[0]


def test_scans_on_different_grids_are_named(tmp_path):
    small = write(tmp_path / "small.nii.gz", scans(1)[0][:18])
    coarse = write(tmp_path / "coarse.nii.gz", scans(1)[0], np.diag([2.0, 2.0, 2.0, 1.0]))
    reference = write(tmp_path / "reference.nii.gz", scans(1)[0])
    with pytest.raises(
        InputError, match=r"small\.nii\.gz: shape \(18, 24, 20\).*Preprocessing\(shape"
    ):
        as_volume_dataset([reference, small])
    # sizes as users write them, not numpy reprs ("np.float64(2.0)")
    with pytest.raises(InputError, match=r"coarse\.nii\.gz: voxel size \(2, 2, 2\) mm, but .*"
                                         r"reference\.nii\.gz has \(1.5, 1.5, 1.5\) mm.*Preprocessing\(voxel_size"):
        as_volume_dataset([reference, coarse])
    # Settings that put them on one grid make them acceptable.
    assert as_volume_dataset([reference, small], Preprocessing(shape=SHAPE)).shape == SHAPE
    resampled = as_volume_dataset([reference, coarse], Preprocessing(voxel_size=2, shape=(16,) * 3))
    np.testing.assert_allclose(np.diag(resampled.affines[0])[:3], [2, 2, 2])


@pytest.mark.parametrize(
    "X, message",
    [
        ([], "X is empty"),
        (np.zeros((0, *SHAPE), np.float32), "X is empty"),
        (pd.Series([], dtype=object), "X is empty"),
        (np.zeros(SHAPE, np.float32), r"X: array of shape \(20, 24, 20\).*X\[None\]"),
        (np.zeros((2, 3, *SHAPE), np.float32), r"X: array of shape \(2, 3, 20, 24, 20\)"),
        (np.zeros((2, 20, 24), np.float32), r"X: array of shape \(2, 20, 24\)"),
        (np.zeros((2, *SHAPE), bool), "X: unsupported input \\(array of dtype bool\\)"),
        ([np.ones(SHAPE), np.ones((20, 24, 22))], r"X\[1\]: shape \(20, 24, 22\)"),
        ([np.ones((2, *SHAPE))], r"X\[0\]: array of shape \(2, 20, 24, 20\)"),
        (np.zeros((2, *SHAPE), complex), "X: Complex data not supported"),
        (scipy.sparse.csr_array(np.ones((2, 3))), "X: sparse input is not supported"),
        ({"a": "scan.nii.gz"}, "X: unsupported input \\(dict\\)"),
        (7, "X: unsupported input \\(int\\)"),
        ({"scan.nii.gz"}, "X: unsupported input \\(set\\)"),
        ("scan.nii.gz", "X is a single scan"),
        (pd.DataFrame({"path": ["a.nii"]}), r"X is a DataFrame; pass its column of paths"),
        (["a.nii.gz", 3.5], r"X\[1\]: unsupported item \(float\)"),
    ],
)
def test_unusable_x_is_named(X, message):
    with pytest.raises(InputError, match=message):
        as_volume_dataset(X)


def test_unusable_arguments_are_named(cohort):
    with pytest.raises(InputError, match="affine: only array input"):
        as_volume_dataset(cohort[1], affine=AFFINE)
    with pytest.raises(InputError, match="affine: the affine is singular"):
        as_volume_dataset(scans(1), affine=np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(InputError, match="preprocessing: expected a Preprocessing"):
        as_volume_dataset(cohort[1], {"shape": (16, 16, 16)})


def test_a_4d_image_or_file_is_a_series_of_scans_as_in_nilearn(tmp_path):
    volumes = scans(3)
    series = nib.Nifti1Image(np.stack(volumes, axis=-1), AFFINE)
    expected = as_volume_dataset([nib.Nifti1Image(v, AFFINE) for v in volumes])
    path = tmp_path / "series.nii.gz"
    nib.save(series, path)
    for X in (series, path, str(path)):
        dataset = as_volume_dataset(X)
        assert len(dataset) == 3
        for i in range(3):
            np.testing.assert_array_equal(dataset[i], expected[i])
        np.testing.assert_allclose(dataset.affines, expected.affines)
    # a damaged 4D gzip is refused like a 3D one, naming it
    content = bytearray(path.read_bytes())
    content[-8] ^= 1
    path.write_bytes(bytes(content))
    with pytest.raises(InputError, match=rf"{path}: corrupt gzip data"):
        as_volume_dataset(str(path))


def test_a_glob_pattern_gives_its_matches_in_order(tmp_path):
    paths = [write(tmp_path / f"sub-{k}_T1w.nii.gz", volume) for k, volume in enumerate(scans(3))]
    dataset = as_volume_dataset(str(tmp_path / "sub-*_T1w.nii.gz"))
    assert dataset.names == sorted(str(p) for p in paths)
    with pytest.raises(InputError, match=r"the pattern .*nothing-\*\.nii' matches no file"):
        as_volume_dataset(str(tmp_path / "nothing-*.nii"))


def test_a_torch_tensor_is_taken_like_its_array():
    volumes = np.stack(scans(2))
    from_tensor = as_volume_dataset(torch.from_numpy(volumes)[:, None])
    from_array = as_volume_dataset(volumes)
    np.testing.assert_array_equal(from_tensor[1], from_array[1])


def test_an_oblique_scan_is_refused_not_read_as_if_straight(tmp_path):
    angle = np.radians(20)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    tilted = write(tmp_path / "tilted.nii.gz", scans(1)[0], rotation @ AFFINE)
    with pytest.raises(InputError, match=r"tilted\.nii\.gz: its voxel axes are 20\.0 degrees off"):
        as_volume_dataset([tilted])
    # a rounding-level tilt is still straight
    rotation[:2, :2] = [[1, -1e-5], [1e-5, 1]]
    assert len(as_volume_dataset([write(tmp_path / "straight.nii.gz", scans(1)[0],
                                        rotation @ AFFINE)])) == 1


def test_a_symlink_loop_and_a_directory_are_named_for_what_they_are(tmp_path):
    loop = tmp_path / "loop.nii.gz"
    loop.symlink_to(loop)
    with pytest.raises(InputError, match=r"loop\.nii\.gz: is a symbolic link that leads nowhere"):
        as_volume_dataset([str(loop)])
    folder = tmp_path / "folder.nii.gz"
    folder.mkdir()
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"subject,session,path\nsub-1,ses-1,{folder}\n")
    with pytest.raises(InputError, match=r"cohort\.csv, line 2: scan file .*folder\.nii\.gz is a "
                                         r"directory, not an image file"):
        read_manifest(manifest)
