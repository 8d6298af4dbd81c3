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
    # It trains in fp32 so that it is the same model on every CPU and whichever test asks
    # for it first: under precision="auto" it would train in bf16 on a CPU with native bf16
    # and in fp32 elsewhere, and a test that simulates native bf16 would train it in
    # emulated bf16, 10-30x slower than fp32 where the CPU has none.
    return LDAEEncoder(preset="tiny", ae_epochs=3, diffusion_epochs=5, representation_epochs=5,
                       precision="fp32", random_state=0).fit(cohort().images)
