"""Similar-scan retrieval over embeddings, and recall of a subject's own visits."""

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA

from ldae.datasets import make_synthetic_cohort
from ldae.exceptions import InputError
from ldae.retrieval import SimilarScans, recall_at_k


@pytest.fixture(scope="module")
def cohort():
    """A small synthetic cohort and the PCA of its voxels (which keeps subject identity)."""
    cohort = make_synthetic_cohort(12, shape=(24, 28, 24), visit_months=(0, 6, 12),
                                   random_state=3)
    voxels = cohort.images.reshape(len(cohort.frame), -1)
    return cohort.frame, PCA(n_components=10, random_state=0).fit_transform(voxels)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_own_visits_are_retrieved_on_the_synthetic_cohort(cohort, metric):
    frame, embeddings = cohort
    assert frame.subject.value_counts().max() > 1
    recall = {k: recall_at_k(embeddings, frame.subject, k=k, metric=metric) for k in (1, 3)}
    print(f"\nrecall@k of own other visits, PCA of voxels, {metric}: {recall}")
    assert recall[1] >= 0.9 and recall[3] >= recall[1]
    # the same embeddings with subjects shuffled: own "visits" are found by chance only
    shuffled = np.random.default_rng(0).permutation(frame.subject.to_numpy())
    assert recall_at_k(embeddings, shuffled, k=1, metric=metric) < 0.5


def test_query_of_the_index_ranks_neighbours_and_can_leave_out_a_subject(cohort):
    frame, embeddings = cohort
    index = SimilarScans(n_neighbors=4).fit(embeddings, subjects=frame.subject, index=frame.session
                                            + "/" + frame.subject)
    found = index.query()
    assert list(found.columns) == ["query", "rank", "neighbour", "subject", "distance"]
    assert (found.groupby("query").size() == 4).all()
    assert (found["query"] != found["neighbour"]).all()  # a scan is not its own neighbour
    assert (found.groupby("query")["distance"].apply(lambda d: d.is_monotonic_increasing)).all()
    assert found.groupby("query")["rank"].apply(list).map(lambda r: r == [1, 2, 3, 4]).all()

    others = index.query(exclude_subjects=frame.subject, k=6)
    own_subject = others["query"].str.split("/").str[1]
    assert (others["subject"] != own_subject).all() and (others.groupby("query").size() == 6).all()


def test_query_with_new_embeddings(cohort):
    frame, embeddings = cohort
    index = SimilarScans(n_neighbors=2, metric="euclidean", standardize=False).fit(
        embeddings, subjects=frame.subject)
    probe = embeddings[[5]] + 1e-6
    found = index.query(probe, ids=["probe"])
    assert found.loc[0, ["query", "neighbour"]].tolist() == ["probe", 5]
    assert found.loc[0, "distance"] < 1e-4
    away = index.query(probe, exclude_subjects=[frame.subject.iloc[5]])
    assert (away["subject"] != frame.subject.iloc[5]).all()


def test_dataframe_index_names_the_neighbours():
    embeddings = pd.DataFrame(np.eye(4) + 0.1, index=["a", "b", "c", "d"])
    found = SimilarScans(n_neighbors=2).fit(embeddings).query()
    assert set(found["neighbour"]) <= {"a", "b", "c", "d"} and "subject" not in found


def test_bad_arguments_are_named(cohort):
    frame, embeddings = cohort
    with pytest.raises(InputError, match="metric"):
        SimilarScans(metric="manhattan").fit(embeddings)
    with pytest.raises(InputError, match="n_neighbors"):
        SimilarScans(n_neighbors=0).fit(embeddings)
    with pytest.raises(InputError, match="subjects has shape"):
        SimilarScans().fit(embeddings, subjects=frame.subject[:3])
    index = SimilarScans().fit(embeddings)
    with pytest.raises(InputError, match="fitted without subjects"):
        index.query(exclude_subjects=frame.subject)
    with pytest.raises(InputError, match="no subject has two scans"):
        recall_at_k(embeddings, np.arange(len(embeddings)))
