"""One tiny fitted LDAEEncoder shared by the tests of the generative tools.

Fitting is the slow part of these tests, so it happens once per test session, the
first time a test asks for the model.
"""

import functools

from ldae import LDAEEncoder
from ldae.datasets import make_synthetic_cohort

# DDIM steps of the generative calls in tests (fewer than 5 invert poorly).
STEPS = 10


@functools.cache
def cohort():
    """8 subjects with visits at 0, 12 and 24 months (24 scans, 8 triplets)."""
    return make_synthetic_cohort(8, shape=(32, 40, 32), visit_months=(0, 12, 24), dropout=0.0,
                                 random_state=0)


@functools.cache
def fitted_encoder():
    # How evenly a model this small responds to ±alpha along a probe direction varies with
    # its initialisation (cosine of the two changes, 3 scans, bf16 training on fp32-cached
    # latents: random_state=0 0.71 / 0.68 / 0.65, 1 0.51 / 0.49 / 0.47, 2 -0.16 / 0.37 /
    # 0.60, 3 0.42 / 0.09 / 0.07; sampling in bf16 makes them smaller still). The tests
    # check the mechanics, so they use a model that has it.
    return LDAEEncoder(preset="tiny", ae_epochs=3, diffusion_epochs=5, representation_epochs=5,
                       random_state=0).fit(cohort().images)
