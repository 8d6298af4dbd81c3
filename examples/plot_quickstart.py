"""
Quickstart: LDAE in a scikit-learn pipeline
===========================================

:class:`ldae.LDAEEncoder` is a scikit-learn transformer: ``fit`` trains the three
stages (autoencoder, latent diffusion, semantic encoder) without labels, ``transform``
returns one embedding per scan. In a :class:`~sklearn.pipeline.Pipeline` it is refitted
inside every fold of a cross-validation, and the subjects (``groups``) keep a subject's
visits on one side of each split.
"""

# %%
# A synthetic cohort: 16 subjects, 1 to 6 visits each, on a 32x40x32 grid.
from ldae.datasets import make_synthetic_cohort

cohort = make_synthetic_cohort(16, shape=(32, 40, 32), random_state=0)
frame = cohort.frame
print(frame[["subject", "months", "age", "diagnosis", "site"]].head())

# %%
# Cross-validate LDAE followed by a logistic regression (AD or MCI against CN).
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_validate
from sklearn.pipeline import make_pipeline

from ldae import LDAEEncoder

model = make_pipeline(
    LDAEEncoder(preset="tiny", ae_epochs=2, diffusion_epochs=2, representation_epochs=2,
                random_state=0),
    LogisticRegression(max_iter=1000),
)
impaired = (frame.diagnosis != "CN").to_numpy()
scores = cross_validate(model, cohort.images, impaired, groups=frame.subject,
                        cv=StratifiedGroupKFold(3), scoring="roc_auc")
print("ROC-AUC per fold:", scores["test_score"].round(3))

# %%
# One encoder fitted on every scan: the embeddings, and each stage's training curve.
from ldae.plotting import plot_training_history

encoder = LDAEEncoder(preset="tiny", random_state=0).fit(cohort.images, groups=frame.subject)
embeddings = encoder.transform(cohort.images)
print(embeddings.shape, encoder.fit_seconds_)
figure = plot_training_history(encoder.history_, title="Training curves of the three stages")
