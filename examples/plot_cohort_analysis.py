"""
Cohort map, similar-scan retrieval and quality control
======================================================

Three tools for looking at a cohort through its embeddings:
:func:`ldae.cohort_map.cohort_map` (a 2-D map with each subject's visits joined),
:class:`ldae.retrieval.SimilarScans` (nearest scans in embedding space) and
:class:`ldae.quality_control.QualityControl` (outliers by embedding distance), here
shown on simulated corrupted scans.
"""

# %%
import tempfile
from pathlib import Path

from ldae import LDAEEncoder
from ldae.cohort_map import cohort_map, plot_cohort_map
from ldae.datasets import make_synthetic_cohort

# The gallery's cohort (16 subjects seen at 0, 12 and 24 months) and model: every example
# fits the same one, so with a shared checkpoint folder the first to run trains it and
# the others load its stages.
cohort = make_synthetic_cohort(16, shape=(32, 40, 32), visit_months=(0, 12, 24), dropout=0.0,
                               random_state=0)
frame = cohort.frame
encoder = LDAEEncoder(preset="tiny", random_state=0,
                      checkpoint_dir=Path(tempfile.gettempdir()) / "ldae-examples")
encoder.fit(cohort.images, groups=frame.subject)

embeddings = encoder.transform(cohort.images)
figure = plot_cohort_map(cohort_map(embeddings, frame, random_state=0), color="diagnosis")

# %%
# The scans nearest to one scan, and how often a scan's nearest neighbours include
# another visit of its own subject.
from ldae.retrieval import SimilarScans, recall_at_k

search = SimilarScans(n_neighbors=3).fit(embeddings, subjects=frame.subject)
print(search.query(embeddings[:1], exclude_subjects=frame.subject[:1]))
print("recall@3 of the same subject:", round(recall_at_k(embeddings, frame.subject, k=3), 3))

# %%
# Quality control: fitted on the cohort, applied to corrupted copies of four scans.
from ldae.quality_control import QualityControl, simulate_corruptions

qc = QualityControl(random_state=0).fit(embeddings)
kinds = ("artefact", "upside-down", "inverted contrast", "noise")
corrupted = simulate_corruptions(cohort.images[:4], kinds=kinds, random_state=0)
flags = qc.predict(encoder.transform(corrupted))
print("flagged:", {kind: bool(flag == -1) for kind, flag in zip(kinds, flags)})
print("clean scans flagged:", int((qc.predict(embeddings) == -1).sum()), "of", len(embeddings))
