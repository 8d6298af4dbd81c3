"""A 16x16x16 model grid for tests of mechanics (reproducibility, resume, persistence,
pipelines, precision), where what the trained model has learnt does not matter: a fit
there takes a quarter of the time of one on the tiny preset's 32x40x32 grid."""

from ldae.datasets import make_synthetic_cohort

GRID = (16, 16, 16)


def small_cohort(n_subjects, *, random_state=0, **kwargs):
    """A synthetic cohort rendered on GRID."""
    return make_synthetic_cohort(n_subjects, shape=GRID, random_state=random_state, **kwargs)
