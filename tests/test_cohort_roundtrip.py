"""A synthetic cohort written to disk reads back, through both cohort readers, as the same frame."""

import numpy as np
import pandas as pd
import pytest

from ldae.datasets import make_synthetic_cohort
from ldae.imaging import Preprocessing, as_volume_dataset, read_bids, read_manifest

COLUMNS = ["subject", "session", "months", "age", "sex", "diagnosis", "path"]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    return root, make_synthetic_cohort(4, shape=(32, 40, 32), random_state=3, output_dir=root)


def _comparable(frame):
    frame = frame[COLUMNS].copy()
    frame["diagnosis"] = frame["diagnosis"].astype(str)
    frame["sex"] = frame["sex"].astype(str)
    frame["months"] = frame["months"].astype(float)
    frame["age"] = frame["age"].astype(float)
    return frame.sort_values(["subject", "months"]).reset_index(drop=True)


@pytest.mark.parametrize("reader", ["manifest", "bids"])
def test_readers_give_back_the_generated_frame(written, reader):
    root, cohort = written
    frame = read_manifest(root / "manifest.tsv") if reader == "manifest" else read_bids(root)
    pd.testing.assert_frame_equal(_comparable(frame), _comparable(cohort.frame),
                                  check_dtype=False, check_categorical=False, atol=1e-6)


def test_files_preprocess_to_the_generated_arrays(written):
    root, cohort = written
    frame = read_manifest(root / "manifest.tsv")
    preprocessing = Preprocessing(shape=(32, 40, 32))
    from_files = as_volume_dataset(frame["path"], preprocessing)
    from_arrays = as_volume_dataset(cohort.images, preprocessing, affine=cohort.affine)
    order = {path: position for position, path in enumerate(cohort.frame["path"])}
    for row, path in enumerate(frame["path"]):
        np.testing.assert_array_equal(from_files[row], from_arrays[order[path]])
    np.testing.assert_allclose(from_files.affine, cohort.affine)
