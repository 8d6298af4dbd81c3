"""
A cross-validated AD study: LDAE against PCA and a supervised encoder
=====================================================================

:func:`ldae.probes.probe_embeddings` runs the two standard linear probes (AD vs CN,
age) on several feature sets over the same subject-grouped folds: the LDAE embedding,
its untrained control, the PCA of the voxels (fitted inside each training fold) and a
supervised encoder trained on each training fold's labels. The per-fold scores are
paired, so the models are compared with the corrected resampled t-test (Holm-corrected
over pairs), and the pooled out-of-fold predictions get subject-level bootstrap
confidence intervals.
"""

# %%
import tempfile
from pathlib import Path

from sklearn.base import clone

from ldae import LDAEEncoder
from ldae.baselines import SupervisedEncoder
from ldae.datasets import make_synthetic_cohort
from ldae.probes import probe_embeddings

# The gallery's cohort (16 subjects seen at 0, 12 and 24 months) and model: every example
# fits the same one, so with a shared checkpoint folder the first to run trains it and
# the others load its stages.
cohort = make_synthetic_cohort(16, shape=(32, 40, 32), visit_months=(0, 12, 24), dropout=0.0,
                               random_state=0)
frame = cohort.frame
encoder = LDAEEncoder(preset="tiny", random_state=0,
                      checkpoint_dir=Path(tempfile.gettempdir()) / "ldae-examples")
encoder.fit(cohort.images, groups=frame.subject)

# The control is the same fit with ``representation_epochs=0``: with a checkpoint folder
# it reuses the fit's stages 1 and 2 and keeps the semantic encoder's initial weights.
control = clone(encoder).set_params(representation_epochs=0).fit(cohort.images,
                                                                 groups=frame.subject)

probes = probe_embeddings(
    {"LDAE": encoder.transform(cohort.images), "LDAE untrained": control.transform(cohort.images)},
    frame, voxels=cohort.images, n_splits=3,
    fold_encoders={"supervised": SupervisedEncoder(preset="tiny", epochs=1, random_state=0)},
    random_state=0)
print(probes.table())

# %%
# LDAE against every other feature set: corrected resampled t-tests, Holm-corrected.
comparisons = probes.comparisons("LDAE")
print(comparisons[["metric", "model_a", "model_b", "mean_difference", "pvalue_corrected"]])

# %%
# The pooled out-of-fold ROC-AUC with a 95 % confidence interval from resampling subjects.
import matplotlib.pyplot as plt
from sklearn.metrics import roc_auc_score, roc_curve

from ldae.stats import bootstrap_ci

predictions = probes.diagnosis.predictions
figure, ax = plt.subplots(figsize=(5, 5))
for name, rows in predictions.groupby("model", sort=False):
    interval = bootstrap_ci(rows.y_true, rows.score, roc_auc_score, groups=rows.subject,
                            n_boot=200, random_state=0)
    fpr, tpr, _ = roc_curve(rows.y_true, rows.score)
    ax.plot(fpr, tpr, label=f"{name}: {interval.estimate:.2f} [{interval.low:.2f}, {interval.high:.2f}]")
ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
ax.set(xlabel="false positive rate", ylabel="true positive rate", title="AD vs CN, pooled folds")
ax.legend(fontsize="small")
