"""Figures of the generative tools (reconstructions, variations, manipulations,
interpolations) and of training.

Volumes are reoriented to RAS (nibabel's closest canonical orientation) and shown
in the neurological convention (the subject's left on the left), with the voxel
aspect ratio of the grid and intensities on a fixed [0, 1] grey scale so that
panels are comparable. Difference maps are drawn in colour (red: brighter, blue:
darker; one symmetric scale per figure, voxels under 5 % of it left transparent)
over the anatomy.

Each function returns a matplotlib Figure (built without pyplot: no window opens,
no global state changes) and, when ``output_file`` is given, also writes it as a
PNG atomically. Volumes may be nibabel images or arrays; arrays are taken as
volumes on the grid of ``affine`` (default: 1 mm voxels), e.g. outputs of
:class:`ldae.LDAEEncoder` with ``affine=encoder.affine_``.
"""

from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure
from nibabel.spatialimages import SpatialImage

from ._files import write_atomically
from .exceptions import InputError

PANEL_INCHES = 1.8
VIEWS = {"x": 0, "y": 1, "z": 2}
"""Slice orientations: sagittal (x), coronal (y), axial (z), by the axis they cut."""
DIFFERENCE_THRESHOLD = 0.05


def plot_reconstruction(originals, reconstructions, *, affine=None, cut_coords=None,
                        output_file=None, title=None):
    """Orthogonal slices of scans next to their reconstructions and the difference.

    One row per scan: sagittal, coronal and axial slices of the original, of the
    reconstruction, and of the difference (reconstruction − original) over the
    original.

    Parameters
    ----------
    originals, reconstructions : volume or batch of volumes
        A 3D array or nibabel image, or an array (n, D, H, W) / list of n volumes.
    affine : ndarray of shape (4, 4), optional
        Grid of array volumes.
    cut_coords : tuple of 3 float, optional
        World coordinates (x, y, z) in mm of the slices; default: the grid's centre.
    output_file : str or Path, optional
        PNG to write.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    originals = _volumes(originals, affine, "originals")
    reconstructions = _volumes(reconstructions, affine, "reconstructions")
    _check_same_count(originals, reconstructions, "originals", "reconstructions")
    differences = [_difference(r, o) for o, r in zip(originals, reconstructions)]
    scale = _difference_scale(differences)
    figure, axes = _grid(len(originals), 9)
    for row, (original, reconstruction, difference) in enumerate(
            zip(originals, reconstructions, differences)):
        for view_index, view in enumerate(VIEWS):
            cut = _cut_index(original, view, cut_coords)
            columns = axes[row, view_index::3]
            _show(columns[0], original, view, cut)
            _show(columns[1], reconstruction, view, cut)
            overlay = _show(columns[2], original, view, cut, difference=difference, scale=scale)
    for column, name in ((1, "original"), (4, "reconstruction"), (7, "reconstruction − original")):
        axes[0, column].set_title(name)
    figure.colorbar(overlay, ax=axes[:, 8], shrink=0.8)
    return _finish(figure, title, output_file)


def plot_variations(variations, *, originals=None, affine=None, view="z", cut_coords=None,
                    output_file=None, title=None):
    """Grid of stochastic variations: one row per embedding, one column per variation.

    Parameters
    ----------
    variations : ndarray of shape (n_embeddings, n_variations, D, H, W) or (n_variations, D, H, W)
        E.g. the output of :meth:`ldae.LDAEEncoder.generate`.
    originals : volume or batch of n_embeddings volumes, optional
        Shown in a first column (e.g. the scans the embeddings came from).
    affine : ndarray of shape (4, 4), optional
        Grid of the volumes.
    view : {"x", "y", "z"}, default="z"
        Sagittal, coronal or axial slices.
    cut_coords : float, optional
        World coordinate (mm) of the slice along the axis of ``view``; default: the
        grid's centre.
    output_file : str or Path, optional
        PNG to write.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    array = np.asarray(variations, dtype=np.float32)
    if array.ndim == 4:
        array = array[None]
    if array.ndim != 5:
        raise InputError(f"variations has shape {array.shape}; expected "
                         "(n_embeddings, n_variations, D, H, W)")
    rows = [_volumes(block, affine, "variations") for block in array]
    first = [] if originals is None else _volumes(originals, affine, "originals")
    if first:
        _check_same_count(first, rows, "originals", "variations")
    _check_view(view)
    figure, axes = _grid(len(rows), len(rows[0]) + bool(first))
    for row, volumes in enumerate(rows):
        panels = ([(first[row], "original")] if first else []) + [
            (volume, f"variation {column + 1}") for column, volume in enumerate(volumes)]
        for column, (volume, name) in enumerate(panels):
            _show(axes[row, column], volume, view, _cut_index(volume, view, cut_coords))
            if row == 0:
                axes[row, column].set_title(name)
    return _finish(figure, title, output_file)


def plot_manipulation(original, manipulated, alphas, *, labels=None, affine=None, view="z",
                      cut_coords=None, output_file=None, title=None):
    """A scan moved along a direction, with difference maps over its anatomy.

    Top row: the manipulated volumes, one per alpha. Bottom row: manipulated −
    original over the original (left blank at alpha = 0, where there is nothing
    to show), on a diverging colour map with a range symmetric about 0.

    Parameters
    ----------
    original : volume
        The reference anatomy. Pass the volume decoded at alpha = 0 (the
        reconstruction) for differences that show the manipulation alone, the
        scan itself for differences that also show what reconstruction loses.
    manipulated : array of shape (n_alphas, D, H, W) or list of volumes
        E.g. ``encoder.manipulate(X[:1], direction, alphas)[:, 0]``.
    alphas : sequence of float
        The alpha of each manipulated volume.
    labels : sequence of str, optional
        Panel titles, one per alpha (e.g. the alphas in AD − CN gaps); default
        ``"alpha = <value>"``.
    affine : ndarray of shape (4, 4), optional
        Grid of array volumes.
    view : {"x", "y", "z"}, default="z"
        Sagittal, coronal or axial slices.
    cut_coords : float, optional
        World coordinate (mm) of the slice; default: the grid's centre.
    output_file : str or Path, optional
        PNG to write.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    (anatomy,) = _volumes(original, affine, "original", single=True)
    frames = _volumes(manipulated, affine, "manipulated")
    alphas = np.atleast_1d(np.asarray(alphas, dtype=float))
    _check_same_count(frames, alphas, "manipulated", "alphas")
    _check_view(view)
    cut = _cut_index(anatomy, view, cut_coords)
    differences = [_difference(frame, anatomy) for frame in frames]
    scale = _difference_scale(differences)
    figure, axes = _grid(2, len(frames))
    labels = [f"alpha = {alpha:g}" for alpha in alphas] if labels is None else list(labels)
    _check_same_count(labels, alphas, "labels", "alphas")
    overlay = None
    for column, (frame, difference, alpha) in enumerate(zip(frames, differences, alphas)):
        _show(axes[0, column], frame, view, cut)
        axes[0, column].set_title(labels[column])
        if alpha == 0:
            axes[1, column].set_axis_off()
            continue
        overlay = _show(axes[1, column], anatomy, view, cut, difference=difference, scale=scale)
    axes[1, 0].set_ylabel("manipulated − original")
    if overlay is not None:
        figure.colorbar(overlay, ax=axes[1, :], shrink=0.8)
    return _finish(figure, title, output_file)


def plot_interpolation(interpolated, t, *, real_middle=None, middle_t=None, affine=None, view="z",
                       cut_coords=None, output_file=None, title=None):
    """An interpolation sequence between two visits, next to the real middle visit.

    Parameters
    ----------
    interpolated : array of shape (n_t, D, H, W) or list of volumes
        E.g. ``encoder.interpolate(X_start[:1], X_end[:1], t)[:, 0]``.
    t : sequence of float
        Position of each interpolated volume (panel titles).
    real_middle : volume, optional
        The real scan of a visit between the two; shown in a last column, with the
        difference (interpolation − real) below it for the interpolated volume
        whose t is closest to ``middle_t``.
    middle_t : float, optional
        Position of ``real_middle`` in [0, 1]; required with it.
    affine : ndarray of shape (4, 4), optional
        Grid of array volumes.
    view : {"x", "y", "z"}, default="z"
        Sagittal, coronal or axial slices.
    cut_coords : float, optional
        World coordinate (mm) of the slice; default: the grid's centre.
    output_file : str or Path, optional
        PNG to write.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    frames = _volumes(interpolated, affine, "interpolated")
    t = np.atleast_1d(np.asarray(t, dtype=float))
    _check_same_count(frames, t, "interpolated", "t")
    _check_view(view)
    if real_middle is not None and middle_t is None:
        raise InputError("middle_t: give the position in [0, 1] of real_middle")
    cut = _cut_index(frames[0], view, cut_coords)
    has_middle = real_middle is not None
    figure, axes = _grid(1 + has_middle, len(frames) + has_middle)
    for column, (frame, position) in enumerate(zip(frames, t)):
        _show(axes[0, column], frame, view, cut)
        axes[0, column].set_title(f"t = {position:.2f}")
    if has_middle:
        (real,) = _volumes(real_middle, affine, "real_middle", single=True)
        closest = int(np.argmin(np.abs(t - middle_t)))
        difference = _difference(frames[closest], real)
        _show(axes[0, -1], real, view, cut)
        axes[0, -1].set_title(f"real visit (t = {middle_t:.2f})")
        overlay = _show(axes[1, -1], real, view, cut, difference=difference,
                        scale=_difference_scale([difference]))
        axes[1, -1].set_title(f"t = {t[closest]:.2f} − real")
        figure.colorbar(overlay, ax=axes[1, -1], shrink=0.8)
        for ax in axes[1, :-1]:
            ax.set_visible(False)
    return _finish(figure, title, output_file)


# ---------------------------------------------------------------- helpers


def plot_training_history(history, *, marks=None, output_file=None, title=None):
    """Loss per epoch of each training stage, with the validation loss when there is one
    and, for stage 3, the validation loss with other scans' codes (the gap between the
    two is how much the code steers the denoiser on held-out scans).

    Parameters
    ----------
    history : dict
        Stage name -> {"loss": [...], "val_loss": [...], "val_loss_shuffled_codes": [...]},
        e.g. :attr:`ldae.LDAEEncoder.history_`.
    marks : dict, optional
        Stage name -> (epoch, label): a dashed vertical line at that (possibly
        fractional) epoch, e.g. where the encoder warm-up of stage 3 ends.
    output_file : str or Path, optional
        PNG to write.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(history, dict) or not history:
        raise InputError("history must be a non-empty dict of stage -> {'loss': [...]}, "
                         "such as LDAEEncoder.history_")
    figure = Figure(figsize=(3.6 * len(history), 3.0), layout="constrained")
    for ax, (stage, curves) in zip(figure.subplots(1, len(history), squeeze=False)[0],
                                   history.items()):
        for key, label in (("loss", "training"), ("val_loss", "validation"),
                           ("val_loss_shuffled_codes", "validation, other scans' codes")):
            values = list(curves.get(key) or [])
            if values:
                ax.plot(np.arange(1, len(values) + 1), values, marker=".", label=label)
        if stage in (marks or {}):
            epoch, label = marks[stage]
            ax.axvline(epoch, color="0.4", linestyle="--", linewidth=1, label=label)
        ax.set_title(stage)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend()
    return _finish(figure, title, output_file)


def _volumes(volumes, affine, name, single=False):
    """Volumes as a list of RAS-oriented float32 Nifti1Images."""
    grid = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    if grid.shape != (4, 4):
        raise InputError(f"affine has shape {grid.shape}; expected (4, 4)")
    if isinstance(volumes, SpatialImage) or (isinstance(volumes, np.ndarray) and volumes.ndim == 3):
        items = [volumes]
    elif isinstance(volumes, np.ndarray) and volumes.ndim == 4:
        items = list(volumes)
    elif isinstance(volumes, (list, tuple)) and volumes:
        items = list(volumes)
    else:
        raise InputError(f"{name}: expected a 3D volume, an array (n, D, H, W) or a list of "
                         f"volumes, got {type(volumes).__name__} of shape {np.shape(volumes)}")
    if single and len(items) != 1:
        raise InputError(f"{name}: expected one volume, got {len(items)}")
    return [_ras_image(item, grid, f"{name}[{i}]") for i, item in enumerate(items)]


def _ras_image(item, affine, name):
    if isinstance(item, SpatialImage):
        data, affine = np.asanyarray(item.dataobj), item.affine
    else:
        data = np.asarray(item)
    if data.ndim != 3 or data.dtype.kind not in "iuf":
        raise InputError(f"{name}: expected a 3D numeric volume, got shape {data.shape}")
    return nib.as_closest_canonical(nib.Nifti1Image(data.astype(np.float32), affine))


def _check_same_count(first, second, first_name, second_name):
    if len(first) != len(second):
        raise InputError(f"{first_name} has {len(first)} items but {second_name} {len(second)}")


def _check_view(view):
    if view not in VIEWS:
        raise InputError(f"view={view!r} is not one of {tuple(VIEWS)}")


def _difference(image, reference):
    if image.shape != reference.shape:
        raise InputError(f"cannot subtract volumes of shapes {image.shape} and {reference.shape}")
    return image.get_fdata(dtype=np.float32) - reference.get_fdata(dtype=np.float32)


def _difference_scale(differences):
    """Symmetric colour limit shared by difference maps: their largest absolute value."""
    largest = max(float(np.abs(difference).max()) for difference in differences)
    return largest if largest > 0 else 1.0


def _cut_index(image, view, cut_coords):
    """Voxel index of the slice of ``view`` at world ``cut_coords`` (default: the centre)."""
    axis = VIEWS[view]
    centre = (np.asarray(image.shape[:3]) - 1) / 2.0
    if cut_coords is None:
        return int(round(centre[axis]))
    world = nib.affines.apply_affine(image.affine, centre)
    coordinates = np.atleast_1d(np.asarray(cut_coords, dtype=float))
    world[axis] = coordinates[axis] if len(coordinates) == 3 else coordinates[0]
    voxel = nib.affines.apply_affine(np.linalg.inv(image.affine), world)
    return int(np.clip(round(voxel[axis]), 0, image.shape[axis] - 1))


def _show(ax, image, view, index, difference=None, scale=None):
    """Draw one slice of ``image`` (and of ``difference`` over it); return the overlay."""
    axis = VIEWS[view]
    shown = [a for a in range(3) if a != axis]
    zooms = image.header.get_zooms()[:3]
    aspect = zooms[shown[1]] / zooms[shown[0]]
    ax.imshow(np.take(image.get_fdata(dtype=np.float32), index, axis=axis).T, cmap="gray",
              vmin=0.0, vmax=1.0, origin="lower", aspect=aspect, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if difference is None:
        return None
    plane = np.take(difference, index, axis=axis).T
    masked = np.ma.masked_where(np.abs(plane) < DIFFERENCE_THRESHOLD * scale, plane)
    return ax.imshow(masked, cmap="RdBu_r", vmin=-scale, vmax=scale, origin="lower",
                     aspect=aspect, interpolation="nearest")


def _grid(n_rows, n_columns):
    figure = Figure(figsize=(PANEL_INCHES * n_columns + 1.0, PANEL_INCHES * n_rows + 0.6),
                    layout="constrained")
    return figure, figure.subplots(n_rows, n_columns, squeeze=False)


def _finish(figure, title, output_file):
    if title:
        figure.suptitle(title)
    if output_file is not None:
        path = Path(output_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda temporary: figure.savefig(temporary, format="png", dpi=100))
    return figure
