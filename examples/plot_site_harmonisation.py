"""
Site effects and harmonisation in a pipeline
============================================

Scanner differences leak into any image representation.
:func:`ldae.site_effects.site_prediction_score` measures the leak (how well a
subject-grouped cross-validated classifier predicts the site from the embedding).
:class:`~ldae.site_effects.SiteHarmonizer` regresses site out, preserving covariates; in a
pipeline after :class:`ldae.LDAEEncoder` it receives the scans' table by metadata
routing, so each fold learns the site effects from its training scans only.
"""

# %%
import tempfile
from pathlib import Path

from ldae import LDAEEncoder
from ldae.datasets import make_synthetic_cohort
from ldae.site_effects import site_prediction_score

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
prediction = site_prediction_score(embeddings, frame.site, frame.subject, random_state=0,
                                   covariates=frame[["age", "diagnosis"]])
print(prediction.table())

# %%
# Site prediction per fold, before and after harmonisation, against chance.
import matplotlib.pyplot as plt

scores = prediction.study.scores
figure, ax = plt.subplots(figsize=(5, 3.5))
names = list(scores.model.unique())
ax.boxplot([scores.balanced_accuracy[scores.model == name] for name in names], tick_labels=names)
ax.axhline(prediction.chance, color="grey", linestyle=":", label="chance")
ax.set(ylabel="balanced accuracy of site", title="how much site leaks into the embedding")
ax.legend()

# %%
# Harmonisation inside a cross-validated AD study. The encoder fitted above (without
# labels, on every scan) is frozen, so each fold fits the harmoniser and the classifier on
# its training scans only; the scans' table reaches the harmoniser of every fold through
# ``params``. (With ``LDAEEncoder`` itself in the pipeline, as in the quickstart, each
# fold also trains its own encoder.)
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ldae.model_selection import run_study
from ldae.site_effects import SiteHarmonizer

frozen = FrozenEstimator(encoder)
models = {
    "LDAE": make_pipeline(frozen, StandardScaler(), LogisticRegression()),
    "LDAE, harmonised": make_pipeline(frozen, SiteHarmonizer(covariates=["age"]),
                                      StandardScaler(), LogisticRegression()),
}
impaired = (frame.diagnosis != "CN").to_numpy()
study = run_study(models, cohort.images, impaired, groups=frame.subject, cv=3,
                  scoring="roc_auc", params={"frame": frame})
print(study.scores.groupby("model").roc_auc.agg(["mean", "std"]))
