"""Data sets that ldae can generate offline.

:func:`make_synthetic_cohort` builds longitudinal T1-weighted cohorts with known ground
truth from the MNI template that nilearn installs.
"""

from .synthetic import make_synthetic_cohort

__all__ = ["make_synthetic_cohort"]
