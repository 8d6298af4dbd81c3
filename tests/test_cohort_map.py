"""Cohort maps: 2D projections joined to the cohort table, and their plots."""

import numpy as np
import pandas as pd
import pytest

from ldae.cohort_map import cohort_map, plot_cohort_map
from ldae.exceptions import InputError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cohort():
    """12 subjects x 3 visits; embeddings drift along one axis with months."""
    rng = np.random.default_rng(0)
    rows, embeddings = [], []
    for subject in range(12):
        centre = rng.normal(size=8)
        diagnosis = ["CN", "MCI", "AD"][subject % 3]
        for months in (24, 0, 12):  # visits deliberately out of time order
            rows.append(dict(subject=f"sub-{subject:03d}", months=float(months), diagnosis=diagnosis,
                             age=60 + subject + months / 12))
            embeddings.append(centre + 0.05 * months * np.eye(8)[0] + rng.normal(0, 0.05, 8))
    frame = pd.DataFrame(rows, index=[f"scan-{i}" for i in range(len(rows))])
    frame["diagnosis"] = pd.Categorical(frame.diagnosis, ["CN", "MCI", "AD"], ordered=True)
    return np.array(embeddings), frame


def test_pca_map_is_joined_to_the_frame(cohort):
    embeddings, frame = cohort
    mapped = cohort_map(embeddings, frame)
    assert list(mapped.columns[:2]) == ["x", "y"]
    assert list(mapped.index) == list(frame.index)
    pd.testing.assert_frame_equal(mapped[frame.columns], frame)
    # x is the first principal axis: it carries more variance than y
    assert mapped.x.var() > mapped.y.var()
    assert mapped.attrs["axis_labels"][0].startswith("PC1 (")
    alone = cohort_map(embeddings)
    assert list(alone.columns) == ["x", "y"] and len(alone) == len(frame)


def test_tsne_map_is_seeded(cohort):
    embeddings, frame = cohort
    first = cohort_map(embeddings, frame, method="tsne", random_state=0)
    second = cohort_map(embeddings, frame, method="tsne", random_state=0)
    assert np.isfinite(first[["x", "y"]].to_numpy()).all()
    np.testing.assert_allclose(first[["x", "y"]], second[["x", "y"]])
    # a subject's visits stay closer to each other than to other subjects
    centres = first.groupby("subject")[["x", "y"]].transform("mean")
    within = np.linalg.norm(first[["x", "y"]] - centres, axis=1).mean()
    spread = np.linalg.norm(first[["x", "y"]] - first[["x", "y"]].mean(), axis=1).mean()
    assert within < spread / 3


@pytest.mark.parametrize("color", ["diagnosis", "age"])
def test_plot_renders_png_with_trajectories(cohort, tmp_path, color):
    embeddings, frame = cohort
    mapped = cohort_map(embeddings, frame)
    path = tmp_path / "maps" / f"{color}.png"
    figure = plot_cohort_map(mapped, color=color, path=path)

    assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 5000
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left
    ax = figure.axes[0]
    assert len(ax.lines) == frame.subject.nunique()  # one line per subject with several visits
    visits = mapped[mapped.subject == "sub-000"].sort_values("months")
    np.testing.assert_allclose(ax.lines[0].get_xdata(), visits.x)
    if color == "diagnosis":
        assert [text.get_text() for text in ax.get_legend().get_texts()] == ["CN", "MCI", "AD"]
    else:
        assert len(figure.axes) == 2  # the colour bar


def test_plot_draws_into_given_axes(cohort):
    from matplotlib.figure import Figure

    embeddings, frame = cohort
    figure = Figure()
    ax = figure.add_subplot()
    returned = plot_cohort_map(cohort_map(embeddings, frame.drop(columns="subject")), ax=ax)
    assert returned is figure and not ax.lines  # no subject column: no trajectories


def test_bad_arguments_are_named(cohort):
    embeddings, frame = cohort
    with pytest.raises(InputError, match="method"):
        cohort_map(embeddings, frame, method="umap")
    with pytest.raises(InputError, match="frame has 3 rows"):
        cohort_map(embeddings, frame.iloc[:3])
    with pytest.raises(InputError, match="clash"):
        cohort_map(embeddings, frame.assign(x=1.0))
    with pytest.raises(InputError, match="site"):
        plot_cohort_map(cohort_map(embeddings, frame), color="site")
