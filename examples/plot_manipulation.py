"""
Manipulation toward Alzheimer's disease
=======================================

A linear probe separating AD from CN in embedding space gives a direction;
``manipulate`` moves a scan's embedding along it (in units of the AD - CN gap of the
training embeddings) and decodes with the scan's own stochastic code, so what changes
is what the direction encodes.
"""

# %%
import tempfile
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ldae import LDAEEncoder
from ldae.datasets import make_synthetic_cohort
from ldae.generation import embedding_direction
from ldae.plotting import plot_manipulation

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
labelled = frame.diagnosis.isin(["CN", "AD"]).to_numpy()
is_ad = (frame.diagnosis == "AD").to_numpy()
probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
probe.fit(embeddings[labelled], is_ad[labelled])

# %%
# The AD - CN gap along the probe's direction, and a CN scan moved 0, 1 and 2 gaps.
direction = embedding_direction(probe, embeddings.shape[1])
projection = embeddings @ direction
gap = projection[is_ad].mean() - projection[(frame.diagnosis == "CN").to_numpy()].mean()
cn_scan = cohort.images[np.flatnonzero(frame.diagnosis == "CN")[0]][None]
alphas = [0.0, gap, 2 * gap]
moved = encoder.manipulate(cn_scan, probe, alphas, steps=10)
print(f"AD - CN gap along the direction: {gap:.3f}; output shape {moved.shape}")
# differences against the scan decoded at 0 gaps show the manipulation alone
figure = plot_manipulation(moved[0, 0], moved[:, 0], alphas, labels=["0 gaps", "1 gap", "2 gaps"],
                           affine=encoder.affine_)
