"""
Brain age and the brain-age gap
===============================

:class:`ldae.brain_age.BrainAgeRegressor` regresses age on embeddings and fits the
age-bias correction on its training scans only. ``predict`` returns the Cole-corrected
age; :meth:`~ldae.brain_age.BrainAgeRegressor.report` labels each kind of prediction, so
that accuracy is judged on the uncorrected one and the corrected gap is used for
association studies.
"""

# %%
import tempfile
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupShuffleSplit

from ldae import LDAEEncoder
from ldae.brain_age import BrainAgeRegressor
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

train, test = next(GroupShuffleSplit(1, test_size=0.3, random_state=0)
                   .split(embeddings, groups=frame.subject))
age = frame.age.to_numpy()
model = BrainAgeRegressor().fit(embeddings[train], age[train], groups=frame.subject.iloc[train])
# a tiny model carries little age signal: compare "uncorrected" with "training mean"
print(model.report(embeddings[test], age[test]).round(2))

# %%
# The corrected brain-age gap of the test scans, by diagnosis.
import matplotlib.pyplot as plt

gap = model.correct(embeddings[test], age[test]) - age[test]
diagnosis = frame.diagnosis.iloc[test].to_numpy()
figure, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
left.scatter(age[test], model.predict(embeddings[test]), c="tab:blue", s=12)
left.plot([age.min(), age.max()], [age.min(), age.max()], color="grey", linestyle=":")
left.set(xlabel="age", ylabel="brain age (Cole-corrected)")
groups = [name for name in ("CN", "MCI", "AD") if name in diagnosis]
right.boxplot([gap[diagnosis == name] for name in groups], tick_labels=groups)
right.axhline(0, color="grey", linestyle=":")
right.set(ylabel="brain-age gap (years)", title="test scans")
print({name: float(np.round(gap[diagnosis == name].mean(), 2)) for name in groups})
