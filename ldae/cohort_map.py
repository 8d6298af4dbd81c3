"""A 2D map of a cohort in embedding space, and its plot.

:func:`cohort_map` projects the embeddings of every scan to two dimensions (PCA or
t-SNE) next to the cohort table; :func:`plot_cohort_map` draws the map coloured by
any column, with the visits of each subject joined in time order.
"""

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_array

from ._files import write_atomically
from .exceptions import InputError

__all__ = ["cohort_map", "plot_cohort_map"]

METHODS = ("pca", "tsne")
# numeric columns with at most this many distinct values are coloured as categories
MAX_NUMERIC_CATEGORIES = 10


def cohort_map(embeddings, frame=None, method="pca", random_state=None, standardize=True):
    """Project each scan's embedding to two dimensions.

    Parameters
    ----------
    embeddings : array-like of shape (n_scans, n_features)
        One embedding per scan.
    frame : DataFrame, optional
        One row per scan, in the order of ``embeddings`` (e.g. the cohort table);
        its columns are joined to the map and its index is kept.
    method : {"pca", "tsne"}, default="pca"
        PCA keeps distances interpretable (axes are the two main directions of
        variation); t-SNE (:class:`sklearn.manifold.TSNE`, perplexity
        ``min(30, (n_scans - 1) / 3)``) shows neighbourhoods better but distorts
        distances between clusters.
    random_state : int, RandomState instance or None, default=None
        Seed of t-SNE (and of randomised PCA solvers).
    standardize : bool, default=True
        Scale every embedding dimension to unit variance first.

    Returns
    -------
    DataFrame
        Columns ``x`` and ``y``, then the columns of ``frame``. For PCA,
        ``attrs["axis_labels"]`` names the axes with their share of variance.
    """
    if method not in METHODS:
        raise InputError(f"method={method!r}: expected one of {METHODS}")
    embeddings = check_array(embeddings, dtype=np.float64, ensure_min_samples=3,
                             input_name="embeddings")
    if frame is not None and len(frame) != len(embeddings):
        raise InputError(f"frame has {len(frame)} rows for {len(embeddings)} embeddings")
    if frame is not None and {"x", "y"} & set(frame.columns):
        raise InputError("frame: its columns 'x' and 'y' would clash with the map's coordinates")
    if standardize:
        embeddings = StandardScaler().fit_transform(embeddings)
    if method == "pca":
        projector = PCA(n_components=2, random_state=random_state)
        coordinates = projector.fit_transform(embeddings)
        shares = 100 * projector.explained_variance_ratio_
        axis_labels = [f"PC{axis + 1} ({share:.0f}% of variance)" for axis, share in enumerate(shares)]
    else:
        perplexity = min(30.0, (len(embeddings) - 1) / 3)
        projector = TSNE(n_components=2, perplexity=perplexity, init="pca",
                         random_state=random_state)
        coordinates = projector.fit_transform(embeddings)
        axis_labels = ["t-SNE 1", "t-SNE 2"]
    index = None if frame is None else frame.index
    result = pd.DataFrame(coordinates, columns=["x", "y"], index=index)
    if frame is not None:
        result = pd.concat([result, frame], axis=1)
    result.attrs["axis_labels"] = axis_labels
    return result


def plot_cohort_map(map_frame, color="diagnosis", ax=None, path=None, subject="subject",
                    time="months"):
    """Scatter plot of a cohort map, coloured by one column, visits joined per subject.

    Parameters
    ----------
    map_frame : DataFrame
        The output of :func:`cohort_map` (columns ``x``, ``y`` and the cohort table).
    color : str or None, default="diagnosis"
        Column colouring the scans. Categories (strings, categoricals, booleans,
        numbers with at most 10 distinct values) get one colour each and a legend;
        other numbers (age, months, a volume) a colour map and a colour bar. None
        draws every scan in one colour.
    ax : matplotlib Axes, optional
        Where to draw; default a new figure (no pyplot state is touched).
    path : str or Path, optional
        Where to write the figure as PNG (atomically).
    subject, time : str, default="subject", "months"
        Columns identifying each scan's subject and its time point; the scans of a
        subject are joined by a line in time order. Skipped when ``subject`` is not
        a column.

    Returns
    -------
    matplotlib.figure.Figure
    """
    missing = {"x", "y", *([color] if color is not None else [])} - set(map_frame.columns)
    if missing:
        raise InputError(f"map_frame lacks the columns {sorted(missing)}")
    if ax is None:
        figure = Figure(figsize=(6.4, 5.2), layout="constrained")
        ax = figure.add_subplot()
    else:
        figure = ax.get_figure()
    _draw_trajectories(ax, map_frame, subject, time)
    if color is None:
        ax.scatter(map_frame["x"], map_frame["y"], s=22, edgecolors="white", linewidths=0.4)
    elif _is_categorical(map_frame[color]):
        _scatter_categories(ax, map_frame, color)
    else:
        points = ax.scatter(map_frame["x"], map_frame["y"], c=map_frame[color], cmap="viridis",
                            s=22, edgecolors="white", linewidths=0.4)
        figure.colorbar(points, ax=ax, label=color)
    x_label, y_label = map_frame.attrs.get("axis_labels", ["x", "y"])
    ax.set(xlabel=x_label, ylabel=y_label,
           title="Cohort map" + (f" coloured by {color}" if color is not None else ""))
    if path is not None:
        _save_png(figure, Path(path))
    return figure


def _draw_trajectories(ax, map_frame, subject, time):
    if subject not in map_frame.columns:
        return
    ordered = map_frame.sort_values(time, kind="stable") if time in map_frame.columns else map_frame
    for _, visits in ordered.groupby(subject, sort=False, observed=True):
        if len(visits) > 1:
            ax.plot(visits["x"], visits["y"], color="0.6", linewidth=0.7, alpha=0.7, zorder=1)


def _scatter_categories(ax, map_frame, column):
    values = map_frame[column]
    categories = (values.cat.categories if isinstance(values.dtype, pd.CategoricalDtype)
                  else pd.unique(values.dropna()))
    colours = _category_colours(len(categories))
    for category, colour in zip(categories, colours):
        chosen = (values == category).to_numpy()
        if chosen.any():
            ax.scatter(map_frame["x"][chosen], map_frame["y"][chosen], color=colour, s=22,
                       edgecolors="white", linewidths=0.4, label=str(category), zorder=2)
    ax.legend(title=column, fontsize="small")


def _category_colours(count):
    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(position % palette.N) for position in range(count)]


def _is_categorical(values):
    if isinstance(values.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(values):
        return True
    return pd.api.types.is_bool_dtype(values) or values.nunique() <= MAX_NUMERIC_CATEGORIES


def _save_png(figure, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda temporary: figure.savefig(temporary, format="png", dpi=120))
