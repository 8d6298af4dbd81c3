"""Writing a cohort as a BIDS-like tree of NIfTI files with its tables.

Every file is written under a temporary name in its final folder and then renamed, so
an interrupted run never leaves a truncated file behind.
"""

import json

import nibabel as nib
from joblib import Parallel, delayed

from .._files import write_atomically
PARTICIPANT_COLUMNS = ("participant_id", "sex", "age", "baseline_diagnosis", "site", "converter")
SESSION_COLUMNS = ("months", "age", "diagnosis", "severity", "ventricle_volume",
                   "hippocampus_volume", "grey_matter_volume", "intracranial_volume")


def scan_path(subject, session):
    """Path of a scan's T1w image relative to the dataset root.

    Parameters
    ----------
    subject, session : str
        BIDS labels with their prefixes, e.g. ``"sub-001"`` and ``"ses-M06"``.

    Returns
    -------
    str
        ``sub-XXX/ses-MYY/anat/sub-XXX_ses-MYY_T1w.nii.gz``
    """
    return f"{subject}/{session}/anat/{subject}_{session}_T1w.nii.gz"


def write_cohort(output_dir, images, frame, affine, n_jobs=None):
    """Write images, ``participants.tsv``, per-subject sessions files and ``manifest.tsv``.

    Parameters
    ----------
    output_dir : pathlib.Path
        Dataset root; created if missing.
    images : ndarray of shape (n_scans, D, H, W)
        One float32 image per row of ``frame``.
    frame : pandas.DataFrame
        One row per scan with the columns of ``make_synthetic_cohort``'s frame.
    affine : ndarray of shape (4, 4)
        Voxel-to-world affine of the images.
    n_jobs : int or None
        Number of threads that compress and write images (None: 1; -1: all cores).

    Returns
    -------
    list of str
        Absolute path of every scan, in the order of ``frame``.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    relative = [scan_path(s, v) for s, v in zip(frame["subject"], frame["session"])]
    Parallel(n_jobs=n_jobs, prefer="threads")(
        delayed(_write_image)(output_dir / path, image, affine)
        for path, image in zip(relative, images)
    )
    _write_tsv(output_dir / "participants.tsv", _participants(frame))
    for subject, sessions in frame.groupby("subject", sort=False):
        table = sessions[["session", *SESSION_COLUMNS]].rename(columns={"session": "session_id"})
        _write_tsv(output_dir / subject / f"{subject}_sessions.tsv", table)
    manifest = frame.copy()
    manifest.insert(2, "path", relative)
    _write_tsv(output_dir / "manifest.tsv", manifest)
    write_atomically(
        output_dir / "dataset_description.json",
        lambda path: path.write_text(json.dumps(
            {"Name": "ldae synthetic cohort", "BIDSVersion": "1.9.0", "DatasetType": "raw",
             "GeneratedBy": [{"Name": "ldae.datasets.make_synthetic_cohort"}]}, indent=2)),
    )
    return [str((output_dir / path).resolve()) for path in relative]


def _participants(frame):
    """One row per subject from its baseline scan (so ``age`` is the baseline age)."""
    baseline = frame[frame["months"] == 0].rename(columns={"subject": "participant_id"})
    return baseline[list(PARTICIPANT_COLUMNS)]


def _write_image(path, image, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nifti = nib.Nifti1Image(image, affine)
    nifti.header.set_xyzt_units("mm")
    nifti.set_sform(affine, code="mni")
    nifti.set_qform(affine, code="mni")
    write_atomically(path, lambda temporary: nib.save(nifti, temporary))


def _write_tsv(path, table):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda temporary: table.to_csv(temporary, sep="\t", index=False,
                                                            na_rep="n/a"))


