"""Age- and disease-related atrophy: deformations in template space and tissue loss.

Ventricles enlarge and hippocampi shrink by deformation. Each deformation is the flow,
for a "time" ``a`` (mm), of a fixed smooth velocity field: the normalised gradient of
the smoothed map of the lateral ventricles (points flow into them, so a scan sampled
through the flow shows them larger; the midline third ventricle and cisterns are left
out of the map, or the flow would balloon them) or minus that of the hippocampus map. A flow is a
diffeomorphism for any ``a``, unlike a displacement that scales with ``a``. The flows
are computed once on a coarse world grid at levels of ATROPHY_LEVEL_STEP_MM and
interpolated between levels; the two displacements add (their supports barely meet).
Cortical thinning and hippocampal tissue loss turn part of the outer cortex and of the
hippocampi into CSF.
"""

import functools

import numpy as np
import torch
from scipy import ndimage
from scipy.special import expit

from ._fields import sample_grid
from ._template import (
    HIPPOCAMPI,
    OUTER_CORTEX,
    SULCAL_CSF,
    VENTRICLES,
    template_on_grid,
)

ATROPHY_REFERENCE_AGE = 40.0
"""Age at which the (young adult) template shows no atrophy."""

ATROPHY_RATES = {
    "ventricle_mm": (0.15, 4.0),
    "hippocampus_mm": (0.02, 1.0),
    "hippocampus_loss": (0.004, 0.3),
    "cortex_loss": (0.01, 0.2),
}
"""amount = per_year * (age - ATROPHY_REFERENCE_AGE) + per_severity * severity."""

ATROPHY_LEVEL_STEP_MM = 1.0
MAX_FLOW_MM = {"ventricle_mm": 16.0, "hippocampus_mm": 6.0}
_FLOW_GRID = ((45, 56, 45), (180.0, 224.0, 180.0))  # 4 mm voxels around the brain
_POTENTIAL_SIGMA_MM = 6.0
_MIDLINE_HALF_WIDTH_MM = 5.0
_EULER_STEPS_PER_LEVEL = 2


def atrophy_amounts(age, severity, strength):
    """Atrophy of each kind at the given ages and severities.

    Parameters
    ----------
    age, severity : array-like of shape (n_scans,)
        Age (years) and disease severity at each scan.
    strength : float
        Multiplies every amount; 0 switches atrophy off.

    Returns
    -------
    dict of str to ndarray of shape (n_scans,)
        ``ventricle_mm`` and ``hippocampus_mm`` (flow lengths in mm, capped at
        MAX_FLOW_MM), ``hippocampus_loss`` and ``cortex_loss`` (fractions in [0, 1]
        turned into CSF).
    """
    years = np.clip(np.asarray(age, dtype=float) - ATROPHY_REFERENCE_AGE, 0.0, None)
    severity = np.asarray(severity, dtype=float)
    amounts = {
        name: strength * (per_year * years + per_severity * severity)
        for name, (per_year, per_severity) in ATROPHY_RATES.items()
    }
    for name, cap in MAX_FLOW_MM.items():
        amounts[name] = np.clip(amounts[name], 0.0, cap)
    for name in ("hippocampus_loss", "cortex_loss"):
        amounts[name] = np.clip(amounts[name], 0.0, 1.0)
    return amounts


def atrophy_displacement(amounts):
    """Template-space displacement of every scan on the coarse flow grid.

    Parameters
    ----------
    amounts : dict of str to ndarray of shape (n_scans,)
        Output of :func:`atrophy_amounts`.

    Returns
    -------
    displacement : torch.Tensor of shape (n_scans, 3, X, Y, Z)
        Displacement (mm) to add to a template point to find where to sample.
    affine : ndarray of shape (4, 4)
        Voxel-to-world affine of the flow grid.
    """
    flows, affine = atrophy_flows()
    displacement = 0.0
    for name, levels in flows.items():
        position = torch.as_tensor(amounts[name], dtype=torch.float32) / ATROPHY_LEVEL_STEP_MM
        lower = position.floor().long().clamp(max=len(levels) - 2)
        weight = (position - lower).view(-1, 1, 1, 1, 1)
        displacement = displacement + torch.lerp(levels[lower], levels[lower + 1], weight)
    return displacement, affine


def thin(tissues, amounts):
    """Turn part of the outer cortex and of the hippocampi into sulcal CSF, in place.

    Parameters
    ----------
    tissues : torch.Tensor of shape (n_scans, len(CHANNELS), D, H, W)
        Tissue compartments of the scans.
    amounts : dict of str to ndarray of shape (n_scans,)
        Output of :func:`atrophy_amounts`.
    """
    sulcal_csf = tissues[:, SULCAL_CSF]
    outer_cortex, hippocampi = tissues[:, OUTER_CORTEX], tissues[:, HIPPOCAMPI]
    for channel, name in ((outer_cortex, "cortex_loss"), (hippocampi, "hippocampus_loss")):
        lost = channel * torch.as_tensor(amounts[name], dtype=torch.float32).view(-1, 1, 1, 1)
        channel -= lost
        sulcal_csf += lost


@functools.lru_cache(maxsize=1)
def atrophy_flows():
    """Flow displacements at every level, computed once per process.

    Returns
    -------
    flows : dict of str to torch.Tensor of shape (n_levels, 3, X, Y, Z)
        For ``"ventricle_mm"`` and ``"hippocampus_mm"``: the displacement after a flow
        of 0, 1, 2, ... ATROPHY_LEVEL_STEP_MM.
    affine : ndarray of shape (4, 4)
        Voxel-to-world affine of the flow grid.
    """
    grid = template_on_grid(*_FLOW_GRID)
    voxel_size = np.diag(grid.affine)[:3]
    lateral = expit(np.abs(grid.world[0].numpy()) - _MIDLINE_HALF_WIDTH_MM)
    lateral_ventricles = grid.channels[VENTRICLES].numpy() * lateral
    velocities = {
        "ventricle_mm": _unit_peak_gradient(lateral_ventricles, voxel_size),
        "hippocampus_mm": -_unit_peak_gradient(grid.channels[HIPPOCAMPI].numpy(), voxel_size),
    }
    flows = {}
    for name, velocity in velocities.items():
        n_levels = int(np.ceil(MAX_FLOW_MM[name] / ATROPHY_LEVEL_STEP_MM)) + 1
        flows[name] = _integrate(torch.from_numpy(velocity), grid, n_levels)
    return flows, grid.affine


def _unit_peak_gradient(probability, voxel_size):
    """Gradient (world axes) of a smoothed probability map, scaled to a peak length of 1."""
    potential = ndimage.gaussian_filter(probability, _POTENTIAL_SIGMA_MM / voxel_size)
    gradient = np.stack(np.gradient(potential, *voxel_size))
    return (gradient / np.sqrt((gradient**2).sum(axis=0)).max()).astype(np.float32)


def _integrate(velocity, grid, n_levels):
    """Euler-integrate the flow of ``velocity`` from every grid point; one field per level."""
    start = grid.world[None]
    position = start.clone()
    step = ATROPHY_LEVEL_STEP_MM / _EULER_STEPS_PER_LEVEL
    levels = [torch.zeros_like(velocity)]
    for _ in range(n_levels - 1):
        for _ in range(_EULER_STEPS_PER_LEVEL):
            position += step * sample_grid(velocity[None], position, grid.affine)
        levels.append((position - start)[0])
    return torch.stack(levels)
