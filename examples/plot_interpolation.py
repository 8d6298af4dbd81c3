"""
Interpolating a missing visit
=============================

:func:`ldae.imputation.impute_missing_visits` predicts every middle visit of a subject
from the two visits that bracket it: the semantic embeddings are interpolated linearly
and the stochastic codes spherically, at the middle visit's time, then decoded. Each
prediction is scored against the real scan, beside copying the nearest visit and the
voxel-wise linear interpolation.
"""

# %%
import tempfile
from pathlib import Path

from ldae import LDAEEncoder
from ldae.datasets import make_synthetic_cohort
from ldae.imputation import impute_missing_visits
from ldae.plotting import plot_interpolation

# The gallery's cohort (16 subjects seen at 0, 12 and 24 months) and model: every example
# fits the same one, so with a shared checkpoint folder the first to run trains it and
# the others load its stages.
cohort = make_synthetic_cohort(16, shape=(32, 40, 32), visit_months=(0, 12, 24), dropout=0.0,
                               random_state=0)
frame = cohort.frame
encoder = LDAEEncoder(preset="tiny", random_state=0,
                      checkpoint_dir=Path(tempfile.gettempdir()) / "ldae-examples")
encoder.fit(cohort.images, groups=frame.subject)

# the first 6 subjects (each prediction inverts and decodes with DDIM: the slow part)
first_six = frame.subject.isin(frame.subject.unique()[:6]).to_numpy()
result = impute_missing_visits(encoder, cohort.images[first_six], frame[first_six], steps=10)
print(result.summary[["reference", "gap", "method", "n_triplets", "ssim_mean", "mse_mean"]]
      .round(3).to_string(index=False))

# %%
# One subject: its first and last visits, the interpolated path and the real middle visit.
first = frame.index[frame.subject == frame.subject.iloc[0]]
start, middle, end = cohort.images[first]
t = [0.0, 0.25, 0.5, 0.75, 1.0]
path = encoder.interpolate(start[None], end[None], t, steps=10)
figure = plot_interpolation(path[:, 0], t, real_middle=middle, middle_t=0.5, affine=encoder.affine_)
