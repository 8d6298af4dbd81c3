"""Figures of the generative tools: written as PNG files and returned as figures."""

import nibabel as nib
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from ldae.exceptions import InputError
from ldae.plotting import (
    plot_interpolation,
    plot_manipulation,
    plot_reconstruction,
    plot_training_history,
    plot_variations,
)

SHAPE = (16, 20, 16)
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(0)
    return rng.random((4, *SHAPE)).astype(np.float32)


def _png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_every_figure_is_returned_and_written_as_png(volumes, tmp_path):
    figures = {
        "reconstruction": plot_reconstruction(volumes[:2], volumes[2:], affine=AFFINE,
                                              output_file=tmp_path / "a" / "reconstruction.png"),
        "variations": plot_variations(np.stack([volumes[:3], volumes[1:]]), originals=volumes[:2],
                                      affine=AFFINE, output_file=tmp_path / "variations.png"),
        "manipulation": plot_manipulation(volumes[0], volumes[1:], [-1, 0, 1], affine=AFFINE,
                                          output_file=tmp_path / "manipulation.png"),
        "interpolation": plot_interpolation(volumes[:3], [0, 0.5, 1], real_middle=volumes[3],
                                            middle_t=0.4, affine=AFFINE,
                                            output_file=tmp_path / "interpolation.png"),
    }
    for name, figure in figures.items():
        assert isinstance(figure, Figure)
        path = tmp_path / ("a" if name == "reconstruction" else "") / f"{name}.png"
        width, height = _png_size(path)
        assert width > 300 and height > 150
    # panels: 2 scans x 3 volumes x 3 views (+ colour bar); 2 x (1 original + 3 variations)
    assert len([ax for ax in figures["reconstruction"].axes if ax.images]) == 18
    assert len(figures["variations"].axes) == 8
    # written atomically: no hidden ".<name>.<random>.png" temporaries left over
    assert not list(tmp_path.rglob(".*"))


def test_difference_maps_show_where_the_volumes_differ(volumes):
    original = np.zeros(SHAPE, dtype=np.float32)
    brighter = original.copy()
    brighter[:, :, SHAPE[2] // 2] = 0.5  # the central axial slice only
    figure = plot_manipulation(original, [original, brighter, original], [-1, 1, 0],
                               labels=["-1 gap", "+1 gap", "0 gaps"])
    assert [ax.get_title() for ax in figure.axes[:3]] == ["-1 gap", "+1 gap", "0 gaps"]
    overlays = [ax.images[1] for ax in figure.axes[3:5]]  # bottom row
    assert overlays[0].get_array().mask.all()  # no difference: nothing drawn over the anatomy
    assert not overlays[1].get_array().mask.any() and np.allclose(overlays[1].get_array(), 0.5)
    # a diverging map, symmetric about 0; the alpha = 0 panel is left blank
    assert overlays[1].get_cmap().name == "RdBu_r"
    assert overlays[1].get_clim()[0] == -overlays[1].get_clim()[1]
    assert not figure.axes[5].images and not figure.axes[5].axison


def test_training_history_marks_the_end_of_the_encoder_warm_up():
    history = {"autoencoder": {"loss": [3.0, 2.0]}, "representation": {"loss": [1.0, 0.9, 0.8]}}
    figure = plot_training_history(history, marks={"representation": (0.75, "warm-up ends")})
    (line,) = [line for line in figure.axes[1].lines if line.get_label() == "warm-up ends"]
    assert line.get_xdata()[0] == 0.75 and len(figure.axes[0].lines) == 1


def test_images_are_drawn_in_ras_orientation():
    volume = np.zeros(SHAPE, dtype=np.float32)
    volume[0] = 1.0  # the first x slab: the subject's left on a RAS grid
    (ax,) = plot_variations(volume[None]).axes
    assert ax.images[0].get_array()[:, 0].all()  # left of the subject on the left
    # on a grid whose x axis runs right to left, the first slab is the subject's right
    flipped = nib.Nifti1Image(volume, np.diag([-4.0, 4.0, 4.0, 1.0]))
    axial = plot_manipulation(flipped, [flipped], [0]).axes[0].images[0].get_array()
    assert axial[:, -1].all() and not axial[:, 0].any()


def test_bad_arguments_are_named(volumes):
    with pytest.raises(InputError, match="originals has 2 items but reconstructions 1"):
        plot_reconstruction(volumes[:2], volumes[:1])
    with pytest.raises(InputError, match="manipulated has 3 items but alphas 2"):
        plot_manipulation(volumes[0], volumes[1:], [0, 1])
    with pytest.raises(InputError, match="view"):
        plot_variations(volumes, view="w")
    with pytest.raises(InputError, match="middle_t"):
        plot_interpolation(volumes[:2], [0, 1], real_middle=volumes[2])
    with pytest.raises(InputError, match="variations has shape"):
        plot_variations(volumes[0])
