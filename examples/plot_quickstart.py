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
# A synthetic cohort on a 32x40x32 grid: 16 subjects seen at 0, 12 and 24 months, the
# cohort of every example in this gallery.
from ldae.datasets import make_synthetic_cohort

cohort = make_synthetic_cohort(16, shape=(32, 40, 32), visit_months=(0, 12, 24), dropout=0.0,
                               random_state=0)
frame = cohort.frame
print(frame[["subject", "months", "age", "diagnosis", "site"]].head())

# %%
# Cross-validate LDAE followed by a logistic regression (AD or MCI against CN).
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_validate
from sklearn.pipeline import make_pipeline

from ldae import LDAEEncoder

model = make_pipeline(
    LDAEEncoder(preset="tiny", ae_epochs=1, diffusion_epochs=1, representation_epochs=1,
                random_state=0),
    LogisticRegression(max_iter=1000),
)
impaired = (frame.diagnosis != "CN").to_numpy()
scores = cross_validate(model, cohort.images, impaired, groups=frame.subject,
                        cv=StratifiedGroupKFold(3), scoring="roc_auc")
print("ROC-AUC per fold:", scores["test_score"].round(3))

# %%
# One encoder fitted on every scan: the embeddings, and each stage's training curve. The
# other examples fit the same model: with a shared checkpoint folder the first to run
# trains it and the others load its stages.
import tempfile
from pathlib import Path

from ldae.plotting import plot_training_history

encoder = LDAEEncoder(preset="tiny", random_state=0,
                      checkpoint_dir=Path(tempfile.gettempdir()) / "ldae-examples")
encoder.fit(cohort.images, groups=frame.subject)
embeddings = encoder.transform(cohort.images)
print(embeddings.shape, encoder.fit_seconds_)
figure = plot_training_history(encoder.history_, title="Training curves of the three stages")
