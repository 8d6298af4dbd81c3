"""Per-scan tissue maps: a subject's own anatomy plus age- and disease-related atrophy.

A scan's tissue maps are the template's compartments pulled back through

    template point = subject warp(x) + atrophy displacement(subject warp(x))

The subject warp (head-size scaling about the brain centre and a smooth random
displacement) is fixed per subject, so all visits share it; the atrophy (see _atrophy)
changes from visit to visit. True volumes are measured on these maps.
"""

from dataclasses import dataclass

import torch

from ._atrophy import atrophy_displacement, thin
from ._fields import control_grid_affine, sample_grid, smooth_random_field
from ..imaging.grid import MNI_BRAIN_CENTRE_MM
from ._template import GREY_CHANNELS, HIPPOCAMPI, VENTRICLES

HEAD_SCALE_BY_SEX = {"F": 0.98, "M": 1.02}
DEFORMATION_SPACING_MM = 8.0
DEFORMATION_CORRELATION_MM = 20.0


@dataclass(frozen=True)
class SubjectAnatomy:
    """What makes one subject's brain differ from the template.

    Attributes
    ----------
    head_scale : float
        Linear scaling of the brain about its centre.
    displacement : torch.Tensor of shape (3, X, Y, Z)
        Smooth displacement (mm) on the control grid of DEFORMATION_SPACING_MM.
    """

    head_scale: float
    displacement: torch.Tensor


def sample_subject_anatomy(rng, sex, *, head_size_sd, deformation_mm):
    """Draw a subject's head size and smooth deformation.

    Parameters
    ----------
    rng : numpy.random.Generator
        The subject's own source of randomness.
    sex : {"F", "M"}
        Men's heads are 4 % larger on average (12 % in volume).
    head_size_sd : float
        Standard deviation of the linear head-size scaling factor.
    deformation_mm : float
        Root-mean-square length of the random displacement in mm.

    Returns
    -------
    SubjectAnatomy
    """
    head_scale = HEAD_SCALE_BY_SEX[sex] + head_size_sd * rng.standard_normal()
    field = smooth_random_field(rng, 3, DEFORMATION_SPACING_MM, DEFORMATION_CORRELATION_MM)
    return SubjectAnatomy(head_scale=max(head_scale, 0.5), displacement=field * deformation_mm)


def scan_tissues(template, anatomy, amounts):
    """Tissue compartments of every scan of one subject.

    Parameters
    ----------
    template : TemplateGrid
        Template compartments on the target grid.
    anatomy : SubjectAnatomy
        The subject's anatomy.
    amounts : dict of str to ndarray of shape (n_visits,)
        Output of :func:`~ldae.datasets._atrophy.atrophy_amounts` for the subject's visits.

    Returns
    -------
    torch.Tensor of shape (n_visits, len(CHANNELS), D, H, W)
        Tissue probabilities, float32.
    """
    points = template.world[None]
    centre = torch.tensor(MNI_BRAIN_CENTRE_MM, dtype=torch.float32).view(1, 3, 1, 1, 1)
    displacement = sample_grid(anatomy.displacement[None], points,
                               control_grid_affine(DEFORMATION_SPACING_MM))
    subject_points = centre + (points - centre) / anatomy.head_scale + displacement
    atrophy, atrophy_affine = atrophy_displacement(amounts)
    scan_points = subject_points + sample_grid(atrophy, subject_points, atrophy_affine)
    tissues = sample_grid(template.channels[None], scan_points, template.affine)
    thin(tissues, amounts)
    return tissues


def tissue_volumes(tissues, voxel_volume_ml):
    """True volumes (mL) of every scan.

    Parameters
    ----------
    tissues : torch.Tensor of shape (n_scans, len(CHANNELS), D, H, W)
        Output of :func:`scan_tissues`.
    voxel_volume_ml : float
        Volume of one voxel.

    Returns
    -------
    dict of str to ndarray of shape (n_scans,)
        ventricle_volume, hippocampus_volume, grey_matter_volume, intracranial_volume.
    """
    per_channel = tissues.sum(dim=(2, 3, 4)).double().numpy() * voxel_volume_ml
    return {
        "ventricle_volume": per_channel[:, VENTRICLES],
        "hippocampus_volume": per_channel[:, HIPPOCAMPI],
        "grey_matter_volume": per_channel[:, list(GREY_CHANNELS)].sum(axis=1),
        "intracranial_volume": per_channel.sum(axis=1),
    }

