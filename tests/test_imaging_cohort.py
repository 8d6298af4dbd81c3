"""Cohort tables from manifests and BIDS-like trees, and their errors."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ldae.exceptions import InputError
from ldae.imaging import as_volume_dataset, read_bids, read_manifest


def write_scan(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).random((8, 10, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return str(path)


def write_table(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace("|", "\t"))
    return path


@pytest.fixture
def manifest_tree(tmp_path):
    root = tmp_path / "study"
    for name in ["a/001_m12.nii.gz", "a/001_m00.nii.gz", "b/002_m06.nii", "c/007.nii.gz"]:
        write_scan(root / "scans" / name)
    return root


def test_manifest_rows_are_typed_resolved_and_sorted(manifest_tree, tmp_path, monkeypatch):
    write_table(
        manifest_tree / "manifest.tsv",
        "subject|session|path|diagnosis|age|site\n"
        "sub-001|ses-M12|scans/a/001_m12.nii.gz|MCI|71.5|3\n"
        "sub-001|ses-M00|scans/a/001_m00.nii.gz|CN|70.5|3\n"
        "007|ses-M00|scans/c/007.nii.gz|AD|n/a|1\n"
        f"sub-002|ses-M06|{manifest_tree}/scans/b/002_m06.nii|CN|80|2\n",
    )
    monkeypatch.chdir(tmp_path)  # relative paths follow the manifest, not the cwd
    frame = read_manifest("study/manifest.tsv")
    expected = pd.DataFrame(
        {
            "subject": ["007", "sub-001", "sub-001", "sub-002"],
            "session": ["ses-M00", "ses-M00", "ses-M12", "ses-M06"],
            "months": [0.0, 0.0, 12.0, 6.0],
            "path": [
                str(manifest_tree / "scans" / name)
                for name in [
                    "c/007.nii.gz",
                    "a/001_m00.nii.gz",
                    "a/001_m12.nii.gz",
                    "b/002_m06.nii",
                ]
            ],
            "diagnosis": ["AD", "CN", "MCI", "CN"],
            "age": [np.nan, 70.5, 71.5, 80.0],
            "site": [1, 3, 3, 2],
        }
    )
    pd.testing.assert_frame_equal(frame, expected, check_dtype=False)
    assert all(isinstance(s, str) for s in frame["subject"])


def test_a_csv_manifest_with_a_months_column_keeps_it(manifest_tree):
    path = manifest_tree / "manifest.csv"
    path.write_text(
        "session,subject,path,months\n"
        "ses-M12,sub-001,scans/a/001_m12.nii.gz,11.5\n"
        "ses-M00,sub-001,scans/a/001_m00.nii.gz,\n"
    )
    frame = read_manifest(path)
    assert frame["months"].tolist() == [0.0, 11.5]  # a gap is filled from the session name
    assert frame.columns[:4].tolist() == ["subject", "session", "months", "path"]
    path.write_text("subject,session,path,months\nsub-001,ses-M00,scans/a/001_m00.nii.gz,0\n")
    assert read_manifest(path)["months"].dtype == np.float64  # whole months too


@pytest.mark.parametrize(
    "rows, message",
    [
        ("subject|path\nsub-001|scans/c/007.nii.gz\n", r"missing column\(s\) \['session'\]"),
        (
            "subject|session|path\nsub-1|ses-M00|scans/c/007.nii.gz\nsub-1|ses-M00|scans/a/001_m00.nii.gz\n",
            r"subject sub-1, session ses-M00 has several scans: .*line 2; .*line 3",
        ),
        (
            "subject|session|path\nsub-1|ses-M00|scans/c/007.nii.gz\nsub-1|ses-M06|scans/gone.nii.gz\n",
            r"manifest\.tsv, line 3: scan file .*gone\.nii\.gz does not exist",
        ),
        (
            "subject|session|path|age\nsub-1|ses-M00|scans/c/007.nii.gz|old\n",
            r"manifest\.tsv, line 2: column 'age' holds 'old', not a number",
        ),
        (
            "subject|session|path\nsub-1||scans/c/007.nii.gz\n",
            r"manifest\.tsv: empty .* line\(s\) 2",
        ),
        (
            "subject|session|path\nsub-1|ses-M00|scans/c/007.nii.gz|extra|field\n",
            r"manifest\.tsv: a row has more fields than the header",
        ),
        ("subject|session|path\n", r"manifest\.tsv: lists no scans"),
    ],
    ids=["missing column", "duplicate", "missing file", "not a number", "empty value",
         "extra field", "header only"],
)
def test_manifest_errors_name_the_file_and_the_line(manifest_tree, rows, message):
    path = write_table(manifest_tree / "manifest.tsv", rows)
    with pytest.raises(InputError, match=message):
        read_manifest(path)


def test_a_trailing_separator_on_a_row_is_harmless(manifest_tree):
    # spreadsheet exports end rows with a separator: an empty last field, not an error
    path = write_table(manifest_tree / "manifest.tsv",
                       "subject|session|path\nsub-1|ses-M00|scans/c/007.nii.gz|\n")
    frame = read_manifest(path)
    assert frame["subject"].tolist() == ["sub-1"] and frame["path"].iloc[0].endswith("007.nii.gz")


def test_a_manifest_of_another_format_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"scans\.xlsx: a manifest must be a \.csv or \.tsv"):
        read_manifest(tmp_path / "scans.xlsx")


@pytest.fixture
def bids_root(tmp_path):
    root = tmp_path / "bids"
    for subject, session in [
        ("sub-001", "ses-M00"),
        ("sub-001", "ses-M12"),
        ("sub-001", "ses-M06"),
        ("sub-010", "ses-M24"),
        ("sub-010", "ses-M00"),
    ]:
        write_scan(root / subject / session / "anat" / f"{subject}_{session}_T1w.nii.gz")
    # Not T1w scans: ignored.
    write_scan(root / "sub-001" / "ses-M00" / "anat" / "sub-001_ses-M00_T2w.nii.gz")
    write_table(
        root / "participants.tsv",
        "participant_id|sex|age|group\nsub-001|F|70|CN\nsub-010|M|65.5|AD\n",
    )
    write_table(
        root / "sub-001" / "sub-001_sessions.tsv",
        "session_id|age|diagnosis|months\nses-M00|70.2|CN|0\nses-M06|n/a|CN|6.5\n"
        "ses-M12|71.1|MCI|12\n",
    )
    return root


def test_bids_tree_gives_one_row_per_t1w_scan_with_session_and_participant_columns(bids_root):
    frame = read_bids(bids_root)
    anat = [
        f"{s}/{t}/anat/{s}_{t}_T1w.nii.gz"
        for s, t in [
            ("sub-001", "ses-M00"),
            ("sub-001", "ses-M06"),
            ("sub-001", "ses-M12"),
            ("sub-010", "ses-M00"),
            ("sub-010", "ses-M24"),
        ]
    ]
    expected = pd.DataFrame(
        {
            "subject": ["sub-001"] * 3 + ["sub-010"] * 2,
            "session": ["ses-M00", "ses-M06", "ses-M12", "ses-M00", "ses-M24"],
            "months": [0.0, 6.5, 12.0, 0.0, 24.0],
            "path": [str(bids_root / name) for name in anat],
            "diagnosis": ["CN", "CN", "MCI", np.nan, np.nan],
            # Session ages first; the participant's fills the gaps.
            "age": [70.2, 70.0, 71.1, 65.5, 65.5],
            "sex": ["F", "F", "F", "M", "M"],
            "group": ["CN", "CN", "CN", "AD", "AD"],
        }
    )
    pd.testing.assert_frame_equal(frame, expected, check_dtype=False)


def test_a_bids_frame_feeds_the_dataset_with_its_index(bids_root):
    frame = read_bids(bids_root).set_index(["subject", "session"])
    dataset = as_volume_dataset(frame["path"])
    assert dataset.index.equals(frame.index) and len(dataset) == 5
    assert dataset.names == frame["path"].tolist()


def test_bids_errors_name_the_file(bids_root, tmp_path):
    with pytest.raises(InputError, match=r"empty: no sub-\*/ses-\*/anat/\*_T1w"):
        read_bids((tmp_path / "empty").mkdir() or tmp_path / "empty")
    with pytest.raises(InputError, match=r"absent: not a folder"):
        read_bids(tmp_path / "absent")
    run2 = write_scan(
        bids_root / "sub-010" / "ses-M00" / "anat" / "sub-010_ses-M00_run-2_T1w.nii.gz"
    )
    with pytest.raises(
        InputError, match=rf"sub-010, session ses-M00 has several scans: .*{Path(run2).name}"
    ):
        read_bids(bids_root)
    Path(run2).unlink()
    write_table(
        bids_root / "sub-010" / "sub-010_sessions.tsv", "session_id|age\nses-M00|1\nses-M00|2\n"
    )
    with pytest.raises(
        InputError, match=r"sub-010_sessions\.tsv: session_id repeated on line\(s\) 2, 3"
    ):
        read_bids(bids_root)
    write_table(bids_root / "sub-010" / "sub-010_sessions.tsv", "age\n1\n")
    with pytest.raises(
        InputError, match=r"sub-010_sessions\.tsv: missing column\(s\) \['session_id'\]"
    ):
        read_bids(bids_root)
    (bids_root / "sub-010" / "sub-010_sessions.tsv").unlink()
    write_table(bids_root / "participants.tsv", "subject|sex\nsub-001|F\n")
    with pytest.raises(
        InputError, match=r"participants\.tsv: missing column\(s\) \['participant_id'\]"
    ):
        read_bids(bids_root)
