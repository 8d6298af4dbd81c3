"""
Reconstruction and stochastic variations
========================================

A fitted :class:`ldae.LDAEEncoder` describes a scan by its semantic embedding y and
its stochastic code x_T (``encode_stochastic``, a deterministic DDIM inversion).
``reconstruct`` decodes both; ``generate`` keeps y and draws new x_T: the variations
share what the embedding encodes and differ in the rest.
"""

# %%
import tempfile
from pathlib import Path

from ldae import LDAEEncoder
from ldae.datasets import make_synthetic_cohort
from ldae.metrics import ssim
from ldae.plotting import plot_reconstruction, plot_variations

# The gallery's cohort (16 subjects seen at 0, 12 and 24 months) and model: every example
# fits the same one, so with a shared checkpoint folder the first to run trains it and
# the others load its stages.
cohort = make_synthetic_cohort(16, shape=(32, 40, 32), visit_months=(0, 12, 24), dropout=0.0,
                               random_state=0)
frame = cohort.frame
encoder = LDAEEncoder(preset="tiny", random_state=0,
                      checkpoint_dir=Path(tempfile.gettempdir()) / "ldae-examples")
encoder.fit(cohort.images, groups=frame.subject)

scans = cohort.images[:2]
reconstructions = encoder.reconstruct(scans, steps=10)
print("SSIM of the reconstructions:", [round(float(ssim(a, b)), 3)
                                       for a, b in zip(scans, reconstructions)])
figure = plot_reconstruction(scans, reconstructions, affine=encoder.affine_)

# %%
# Three variations of the first scan: same embedding, new stochastic codes.
variations = encoder.generate(encoder.transform(scans[:1]), n_variations=3, random_state=0,
                              steps=10)
figure = plot_variations(variations[0], originals=scans[:1], affine=encoder.affine_)
