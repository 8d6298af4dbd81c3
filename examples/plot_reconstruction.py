"""
Reconstruction and stochastic variations
========================================

A fitted :class:`ldae.LDAEEncoder` describes a scan by its semantic embedding y and
its stochastic code x_T (``encode_stochastic``, a deterministic DDIM inversion).
``reconstruct`` decodes both; ``generate`` keeps y and draws new x_T: the variations
share what the embedding encodes and differ in the rest.
"""

# %%
from ldae import LDAEEncoder
from ldae.datasets import make_synthetic_cohort
from ldae.metrics import ssim
from ldae.plotting import plot_reconstruction, plot_variations

cohort = make_synthetic_cohort(16, shape=(32, 40, 32), random_state=4)
encoder = LDAEEncoder(preset="tiny", random_state=0).fit(cohort.images)
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
