"""Synthetic longitudinal T1-weighted cohorts with known ground truth."""

from contextlib import contextmanager
from itertools import pairwise
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.utils import Bunch

from ..exceptions import InputError
from ..imaging.grid import MNI_FIELD_OF_VIEW_MM
from ._anatomy import sample_subject_anatomy, scan_tissues, tissue_volumes
from ._atrophy import atrophy_amounts, atrophy_flows
from ._bids import write_cohort
from ._cohort import DIAGNOSES, sample_cohort, site_labels
from ._image import form_images, sample_sites
from ._template import template_on_grid

DESCR = """\
Synthetic longitudinal T1-weighted brain MRI cohort (ldae)
==========================================================

Skull-stripped, MNI-aligned T1w volumes built from the MNI ICBM152 2009 template that
nilearn ships, on a grid of {shape} voxels spanning {field_of_view} mm (voxel size {voxel} mm).

Subjects ({n_subjects}) have a baseline age uniform in {age_range} years, a sex, a site
out of {n_sites} and a diagnosis CN / MCI / AD whose odds of AD rise with age. A disease
severity in [0, 1] (CN < 0.2 <= MCI < 0.5 <= AD) rises linearly at a rate that depends on
the diagnosis; MCI converters cross into AD between two visits. Visits follow the month
grid {visit_months} with a drop-out of {dropout} after each visit ({n_scans} scans).

Each subject has its own head size and smooth random deformation, shared by its visits.
The lateral ventricles enlarge and the hippocampi shrink by deformation (flows in
template space), and the outer cortex and hippocampi partly turn into CSF, with age and
severity. Images mix
tissue intensities with a per-site contrast, a smooth multiplicative bias field and
Gaussian noise, and are clipped to [0, 1].

frame holds one row per scan (row i describes images[i]): subject, session, months, age,
sex, diagnosis, baseline_diagnosis, converter, severity, site and the true
ventricle_volume, hippocampus_volume, grey_matter_volume and intracranial_volume (mL)
measured on the scan's own tissue maps.
"""


def make_synthetic_cohort(
    n_subjects=100,
    *,
    shape=(64, 80, 64),
    field_of_view=MNI_FIELD_OF_VIEW_MM,
    age_range=(55.0, 90.0),
    diagnosis_proportions=(0.4, 0.35, 0.25),
    visit_months=(0, 6, 12, 24, 36, 48),
    dropout=0.15,
    conversion_rate=0.35,
    n_sites=3,
    head_size_sd=0.03,
    deformation_mm=2.0,
    atrophy_strength=1.0,
    noise=0.02,
    bias_field=0.08,
    random_state=None,
    output_dir=None,
    n_jobs=None,
):
    """Generate a synthetic longitudinal T1w cohort of ageing and Alzheimer's disease.

    Images are built on the target grid from the MNI ICBM152 2009 template that nilearn
    installs (no download). Each subject gets its own anatomy (head-size scaling and a
    smooth random deformation); each visit adds age- and severity-driven atrophy
    (ventricle enlargement, hippocampal shrinkage, cortical thinning); each image gets a
    site-specific contrast, a smooth bias field and noise. The true volumes of every
    scan are measured on the tissue maps it was rendered from.

    Parameters
    ----------
    n_subjects : int, default=100
        Number of subjects. Each has 1 to ``len(visit_months)`` scans.
    shape : tuple of 3 int, default=(64, 80, 64)
        Grid size along x (left to right), y (posterior to anterior) and z (inferior to
        superior); ``images`` has shape ``(n_scans, *shape)``.
    field_of_view : tuple of 3 float, default=(176.0, 220.0, 176.0)
        Field of view in mm, centred on the template brain; the voxel size is
        ``field_of_view / shape`` (2.75 mm isotropic by default). With the default
        and a preset's ``image_shape``, the images lie exactly on that preset's
        model grid (:func:`ldae.imaging.grid.grid_affine`).
    age_range : tuple of 2 float, default=(55.0, 90.0)
        Baseline ages are uniform in this range (years).
    diagnosis_proportions : tuple of 3 float, default=(0.4, 0.35, 0.25)
        Probabilities of CN, MCI and AD at the middle of ``age_range``; they sum to 1.
        Older subjects are more likely MCI and even more likely AD (log-odds against CN
        +0.4 and +0.9 per decade).
    visit_months : tuple of int, default=(0, 6, 12, 24, 36, 48)
        ADNI-like visit schedule in months since baseline; strictly increasing, starts
        at 0.
    dropout : float, default=0.15
        Probability in [0, 1] that a subject leaves the study after each visit, so the
        number of visits varies.
    conversion_rate : float, default=0.35
        Probability that an MCI subject with at least two visits converts to AD at one
        of its later visits.
    n_sites : int, default=3
        Number of acquisition sites, each with its own tissue contrast, noise level and
        bias-field strength; subjects are assigned uniformly.
    head_size_sd : float, default=0.03
        Standard deviation of the linear head-size scaling (mean 0.98 for women, 1.02
        for men).
    deformation_mm : float, default=2.0
        Root-mean-square length (mm), along each axis, of each subject's smooth random
        deformation (Gaussian correlation length 20 mm).
    atrophy_strength : float, default=1.0
        Multiplies every atrophy effect; 0 gives scans without atrophy. The ventricular
        and hippocampal deformations saturate at 16 mm and 6 mm of flow, and tissue loss
        at 100 %.
    noise : float, default=0.02
        Typical standard deviation of the Gaussian noise inside the brain (intensities
        in [0, 1]); each site's is 0.75 to 1.25 times it.
    bias_field : float, default=0.08
        Typical standard deviation of the log of the smooth multiplicative bias field;
        each site's is 0.5 to 1.5 times it.
    random_state : int, numpy.random.Generator, numpy.random.RandomState or None, \
default=None
        Seed of the cohort; None draws fresh entropy. The same value gives exactly the
        same cohort; the anatomy and table of a subject do not depend on ``shape``.
    output_dir : str, os.PathLike or None, default=None
        If given, also write the cohort there as a BIDS-like tree:
        ``sub-XXX/ses-MYY/anat/sub-XXX_ses-MYY_T1w.nii.gz`` (float32, the grid's affine),
        ``participants.tsv``, ``sub-XXX/sub-XXX_sessions.tsv``, ``manifest.tsv`` (path
        relative to ``output_dir`` and every frame column) and
        ``dataset_description.json``. Existing files of the same names are replaced.
    n_jobs : int or None, default=None
        Threads that render subjects and write NIfTI files (None: 1 unless in a
        :func:`joblib.parallel_config` context, -1: all cores). The cohort does not
        depend on it.

    Returns
    -------
    sklearn.utils.Bunch
        images : ndarray of shape (n_scans, D, H, W)
            float32 intensities in [0, 1], held in memory (4 bytes per voxel).
        frame : pandas.DataFrame
            One row per scan: subject (``sub-001``), session (``ses-M00``), months, age
            (at the scan), sex (F/M), diagnosis (at the scan; categorical CN < MCI < AD),
            baseline_diagnosis, converter (bool), severity (in [0, 1]), site, and the true
            ventricle_volume, hippocampus_volume, grey_matter_volume and
            intracranial_volume in mL; with ``output_dir``, also path (absolute).
        affine : ndarray of shape (4, 4)
            Voxel-to-world affine of the grid (RAS, world = MNI mm).
        DESCR : str
            Description of the cohort.

    Raises
    ------
    ldae.exceptions.InputError
        If an argument is out of range; the message names it.

    Notes
    -----
    Severity drives the diagnosis: CN below 0.2, MCI from 0.2 to 0.5, AD from 0.5. The
    true volumes include partial volume at the grid's voxel size, so thin structures
    (the ventricles) measure a few percent larger on finer grids. The first call for a
    grid resamples the template (a few seconds); later calls reuse it.

    Examples
    --------
    >>> from ldae.datasets import make_synthetic_cohort
    >>> cohort = make_synthetic_cohort(20, shape=(32, 40, 32), random_state=0)
    >>> cohort.images.shape[1:]
    (32, 40, 32)
    """
    shape = _positive_triple(shape, "shape", integer=True)
    field_of_view = _positive_triple(field_of_view, "field_of_view", integer=False)
    _check_arguments(n_subjects, age_range, diagnosis_proportions, visit_months, dropout,
                     conversion_rate, n_sites, head_size_sd, deformation_mm, atrophy_strength,
                     noise, bias_field)
    folder = None if output_dir is None else _output_folder(output_dir)
    cohort_seed, sites_seed, *subject_seeds = _seed_sequence(random_state).spawn(2 + n_subjects)

    subjects, scans = sample_cohort(
        np.random.default_rng(cohort_seed), n_subjects, age_range=age_range,
        diagnosis_proportions=diagnosis_proportions, visit_months=tuple(visit_months),
        dropout=dropout, conversion_rate=conversion_rate, n_sites=n_sites,
    )
    sites = dict(zip(site_labels(n_sites), sample_sites(
        np.random.default_rng(sites_seed), n_sites, noise=noise, bias_field=bias_field)))
    images = np.empty((len(scans), *shape), dtype=np.float32)
    rows_of = scans.groupby("subject", sort=False).indices
    with _torch_threads(1):
        template = template_on_grid(shape, field_of_view)
        atrophy_flows()  # computed once here rather than by racing workers
        volumes = Parallel(n_jobs=n_jobs, require="sharedmem")(
            delayed(_render_subject)(
                np.random.default_rng(seed), scans.iloc[rows_of[subject.subject]], template,
                sites[subject.site], images, rows_of[subject.subject], sex=subject.sex,
                head_size_sd=head_size_sd, deformation_mm=deformation_mm,
                atrophy_strength=atrophy_strength,
            )
            for subject, seed in zip(subjects.itertuples(index=False), subject_seeds)
        )
    truth = {name: np.empty(len(scans)) for name in volumes[0]}
    for subject, subject_volumes in zip(subjects["subject"], volumes):
        for name, values in subject_volumes.items():
            truth[name][rows_of[subject]] = values
    frame = scans.assign(**truth)
    if folder is not None:
        frame["path"] = write_cohort(folder, images, frame, template.affine, n_jobs=n_jobs)
    descr = DESCR.format(
        shape=shape, field_of_view=field_of_view,
        voxel=tuple(round(f / s, 3) for f, s in zip(field_of_view, shape)),
        n_subjects=n_subjects, age_range=tuple(age_range), n_sites=n_sites,
        visit_months=tuple(visit_months), dropout=dropout, n_scans=len(frame),
    )
    return Bunch(images=images, frame=frame, affine=np.array(template.affine), DESCR=descr)


def _render_subject(rng, visits, template, site, images, rows, *, sex, head_size_sd,
                    deformation_mm, atrophy_strength):
    """Render one subject's visits into ``images[rows]``; return their true volumes."""
    anatomy = sample_subject_anatomy(rng, sex, head_size_sd=head_size_sd,
                                     deformation_mm=deformation_mm)
    amounts = atrophy_amounts(visits["age"], visits["severity"], atrophy_strength)
    tissues = scan_tissues(template, anatomy, amounts)
    images[rows] = form_images(rng, tissues, template.world, site)
    return tissue_volumes(tissues, template.voxel_volume_ml)


@contextmanager
def _torch_threads(n_threads):
    """Temporarily set torch's intra-op threads.

    Subjects are rendered in parallel by joblib threads, each running torch on one
    thread: on a shared machine, torch's own thread pool spends most of its time
    waiting at the barriers of small operations.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _seed_sequence(random_state):
    if isinstance(random_state, np.random.Generator):
        return np.random.SeedSequence(int(random_state.integers(2**63)))
    if isinstance(random_state, np.random.RandomState):
        return np.random.SeedSequence(int(random_state.randint(2**63, dtype=np.int64)))
    if random_state is None or (isinstance(random_state, Integral)
                                and not isinstance(random_state, bool) and random_state >= 0):
        return np.random.SeedSequence(None if random_state is None else int(random_state))
    raise InputError(
        f"random_state must be None, a non-negative int, a numpy Generator or RandomState; "
        f"got {random_state!r}"
    )


def _positive_triple(value, name, *, integer):
    kind = Integral if integer else Real
    try:
        items = tuple(value)
    except TypeError:
        items = ()
    if len(items) != 3 or not all(isinstance(v, kind) and not isinstance(v, bool) and v > 0
                                  for v in items):
        what = "integers" if integer else "numbers"
        raise InputError(f"{name} must be 3 positive {what}; got {value!r}")
    if integer and min(items) < 8:
        raise InputError(f"{name} must have at least 8 voxels along each axis; got {value!r}")
    return tuple(int(v) for v in items) if integer else tuple(float(v) for v in items)


def _check_arguments(n_subjects, age_range, diagnosis_proportions, visit_months, dropout,
                     conversion_rate, n_sites, head_size_sd, deformation_mm, atrophy_strength,
                     noise, bias_field):
    _require(isinstance(n_subjects, Integral) and not isinstance(n_subjects, bool)
             and n_subjects >= 1, "n_subjects must be an integer >= 1", n_subjects)
    _require(isinstance(n_sites, Integral) and not isinstance(n_sites, bool) and n_sites >= 1,
             "n_sites must be an integer >= 1", n_sites)
    _require(_is_numbers(age_range, 2) and 0 <= age_range[0] < age_range[1],
             "age_range must be two ages (low, high) with 0 <= low < high", age_range)
    _require(_is_numbers(diagnosis_proportions, len(DIAGNOSES))
             and min(diagnosis_proportions) >= 0 and np.isclose(sum(diagnosis_proportions), 1),
             "diagnosis_proportions must be 3 non-negative numbers (CN, MCI, AD) summing to 1",
             diagnosis_proportions)
    _require(_is_numbers(visit_months, None) and len(visit_months) >= 1
             and all(isinstance(m, Integral) for m in visit_months) and visit_months[0] == 0
             and all(b > a for a, b in pairwise(visit_months)),
             "visit_months must be strictly increasing integers starting at 0", visit_months)
    for name, value in (("dropout", dropout), ("conversion_rate", conversion_rate)):
        _require(isinstance(value, Real) and 0 <= value <= 1, f"{name} must be in [0, 1]", value)
    for name, value in (("head_size_sd", head_size_sd), ("deformation_mm", deformation_mm),
                        ("atrophy_strength", atrophy_strength), ("noise", noise),
                        ("bias_field", bias_field)):
        _require(isinstance(value, Real) and np.isfinite(value) and value >= 0,
                 f"{name} must be a finite number >= 0", value)


def _is_numbers(value, length):
    try:
        items = tuple(value)
    except TypeError:
        return False
    return (length is None or len(items) == length) and all(
        isinstance(v, Real) and not isinstance(v, bool) and np.isfinite(v) for v in items
    )


def _require(condition, message, value):
    if not condition:
        raise InputError(f"{message}; got {value!r}")


def _output_folder(output_dir):
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"output_dir {str(folder)!r} exists and is not a folder")
    return folder
