"""
Longitudinal mixed models on embeddings
=======================================

:func:`ldae.longitudinal.fit_mixed_models` fits one linear mixed model per embedding
dimension, ``value ~ time * diagnosis + baseline covariates`` with a random intercept and
slope per subject (statsmodels), and corrects the p-values across dimensions. A
time-by-diagnosis interaction is a dimension that changes faster in one group.
"""

# %%
import tempfile
from pathlib import Path

from ldae import LDAEEncoder
from ldae.datasets import make_synthetic_cohort
from ldae.longitudinal import fit_mixed_models

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
table = fit_mixed_models(embeddings, frame, n_components=4)
# does a dimension change faster in MCI or AD than in CN? (FDR-corrected over dimensions)
interaction = table[table.term.str.startswith("time:")]
print(interaction[["dimension", "term", "estimate", "ci_low", "ci_high", "pvalue_corrected"]]
      .round(3).to_string(index=False))

# %%
# The trajectories of the first principal component of the embedding, by diagnosis.
import matplotlib.pyplot as plt
from sklearn.decomposition import PCA

component = PCA(1).fit_transform(embeddings)[:, 0]
figure, ax = plt.subplots(figsize=(6, 4))
colours = {"CN": "tab:blue", "MCI": "tab:orange", "AD": "tab:red"}
for subject, rows in frame.assign(component=component).groupby("subject"):
    ax.plot(rows.months, rows.component, color=colours[rows.baseline_diagnosis.iloc[0]],
            alpha=0.6, marker="o", markersize=3)
ax.set(xlabel="months since baseline", ylabel="embedding PC 1",
       title="one line per subject, coloured by baseline diagnosis")
