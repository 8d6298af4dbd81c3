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
from ldae import LDAEEncoder
from ldae.datasets import make_synthetic_cohort
from ldae.site_effects import site_prediction_score

cohort = make_synthetic_cohort(24, shape=(32, 40, 32), random_state=8)
frame = cohort.frame
encoder = LDAEEncoder(preset="tiny", random_state=0).fit(cohort.images, groups=frame.subject)
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
# Harmonisation inside a cross-validated AD study: the scans' table reaches the
# harmoniser of every fold through ``params``.
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ldae.model_selection import run_study
from ldae.site_effects import SiteHarmonizer

tiny = dict(preset="tiny", ae_epochs=1, diffusion_epochs=1, representation_epochs=1,
            random_state=0)
models = {
    "LDAE": make_pipeline(LDAEEncoder(**tiny), StandardScaler(), LogisticRegression()),
    "LDAE, harmonised": make_pipeline(LDAEEncoder(**tiny), SiteHarmonizer(covariates=["age"]),
                                      StandardScaler(), LogisticRegression()),
}
impaired = (frame.diagnosis != "CN").to_numpy()
study = run_study(models, cohort.images, impaired, groups=frame.subject, cv=3,
                  scoring="roc_auc", params={"frame": frame})
print(study.scores.groupby("model").roc_auc.agg(["mean", "std"]))
