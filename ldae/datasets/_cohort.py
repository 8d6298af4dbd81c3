"""Who is scanned when: demographics, diagnoses, disease severity and visits.

Disease severity is a number in [0, 1] (0 healthy, 1 end stage) that drives the
disease-related atrophy. Diagnoses are bands of it: CN below 0.2, MCI from 0.2 to
0.5, AD from 0.5. It rises linearly with time at a subject-specific rate whose range
depends on the diagnosis; an MCI converter is given the rate that carries it across
the AD threshold between two of its visits, so its diagnosis changes at a later visit.
"""

import numpy as np
import pandas as pd

DIAGNOSES = ("CN", "MCI", "AD")
AD_THRESHOLD = 0.5
BASELINE_SEVERITY = {"CN": (0.0, 0.1), "MCI": (0.2, 0.45), "AD": (0.5, 0.9)}
SEVERITY_RATE_PER_YEAR = {"CN": (0.0, 0.01), "MCI": (0.0, 0.04), "AD": (0.04, 0.12)}
CONVERTER_RATE_PER_YEAR = (0.05, 0.15)
AGE_LOG_ODDS_PER_DECADE = np.array([0.0, 0.4, 0.9])
"""Change per decade of age of the log-odds of CN, MCI and AD (against CN)."""


def sample_cohort(rng, n_subjects, *, age_range, diagnosis_proportions, visit_months,
                  dropout, conversion_rate, n_sites):
    """Draw subjects and their visits.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    n_subjects : int
        Number of subjects.
    age_range : tuple of 2 float
        Baseline ages are uniform in this range (years).
    diagnosis_proportions : tuple of 3 float
        Probabilities of CN, MCI and AD at the middle of ``age_range``; the odds of MCI
        and AD against CN rise with age (AGE_LOG_ODDS_PER_DECADE).
    visit_months : tuple of int
        Visit schedule in months since baseline, starting at 0.
    dropout : float
        Probability of leaving the study after each visit.
    conversion_rate : float
        Probability that an MCI subject with at least two visits converts to AD.
    n_sites : int
        Number of acquisition sites; subjects are assigned uniformly.

    Returns
    -------
    subjects : pandas.DataFrame
        One row per subject: subject, sex, baseline_age, baseline_diagnosis, site.
    scans : pandas.DataFrame
        One row per scan: subject, session, months, age, sex, diagnosis,
        baseline_diagnosis, converter, severity, site.
    """
    baseline_age = rng.uniform(*age_range, size=n_subjects)
    subjects = pd.DataFrame(
        {
            "subject": _subject_labels(n_subjects),
            "sex": rng.choice(np.array(["F", "M"]), size=n_subjects),
            "baseline_age": baseline_age,
            "baseline_diagnosis": _sample_diagnoses(
                rng, baseline_age, np.mean(age_range), diagnosis_proportions
            ),
            "site": np.asarray(site_labels(n_sites))[rng.integers(n_sites, size=n_subjects)],
        }
    )
    visits = [
        _subject_visits(rng, row, visit_months, dropout, conversion_rate)
        for row in subjects.itertuples(index=False)
    ]
    scans = pd.DataFrame({column: np.concatenate([v[column] for v in visits])
                          for column in visits[0]})
    for column in ("diagnosis", "baseline_diagnosis"):
        scans[column] = pd.Categorical(scans[column], categories=DIAGNOSES, ordered=True)
    subjects["baseline_diagnosis"] = pd.Categorical(
        subjects["baseline_diagnosis"], categories=DIAGNOSES, ordered=True
    )
    return subjects, scans


def site_labels(n_sites):
    """Names of the sites, ``site-01``, ``site-02``, ...

    Parameters
    ----------
    n_sites : int
        Number of sites.

    Returns
    -------
    list of str
    """
    return [f"site-{k + 1:02d}" for k in range(n_sites)]


def _subject_labels(n_subjects):
    width = max(3, len(str(n_subjects)))
    return [f"sub-{k + 1:0{width}d}" for k in range(n_subjects)]


def _sample_diagnoses(rng, age, middle_age, proportions):
    log_odds = np.log(np.asarray(proportions, dtype=float) + 1e-12)
    logits = log_odds + np.outer((age - middle_age) / 10.0, AGE_LOG_ODDS_PER_DECADE)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    draws = (probabilities.cumsum(axis=1) < rng.random((len(age), 1))).sum(axis=1)
    return np.asarray(DIAGNOSES)[np.minimum(draws, len(DIAGNOSES) - 1)]


def _subject_visits(rng, subject, visit_months, dropout, conversion_rate):
    months = np.asarray(visit_months[:_number_of_visits(rng, len(visit_months), dropout)])
    years = months / 12.0
    diagnosis = np.full(len(months), subject.baseline_diagnosis, dtype=object)
    converts = bool(subject.baseline_diagnosis == "MCI" and len(months) > 1
                    and rng.random() < conversion_rate)
    if converts:
        first_ad_visit = rng.integers(1, len(months))
        severity0, rate = _converter_progression(rng, years[first_ad_visit - 1],
                                                 years[first_ad_visit])
        diagnosis[first_ad_visit:] = "AD"
    else:
        severity0, rate = _stable_progression(rng, subject.baseline_diagnosis, years[-1])
    n_visits = len(months)
    return {
        "subject": np.full(n_visits, subject.subject),
        "session": np.array([f"ses-M{m:02d}" for m in months]),
        "months": months.astype(int),
        "age": subject.baseline_age + years,
        "sex": np.full(n_visits, subject.sex),
        "diagnosis": diagnosis,
        "baseline_diagnosis": np.full(n_visits, subject.baseline_diagnosis),
        "converter": np.full(n_visits, converts),
        "severity": np.minimum(severity0 + rate * years, 1.0),
        "site": np.full(n_visits, subject.site),
    }


def _number_of_visits(rng, n_planned, dropout):
    """Visits until drop-out: each visit is the last one with probability ``dropout``."""
    return n_planned if dropout == 0 else min(n_planned, int(rng.geometric(dropout)))


def _converter_progression(rng, last_mci_years, first_ad_years):
    """Baseline severity and yearly rate that cross the AD threshold between two visits."""
    onset = first_ad_years - rng.uniform(0.0, first_ad_years - last_mci_years)
    severity0 = max(BASELINE_SEVERITY["MCI"][0],
                    AD_THRESHOLD - rng.uniform(*CONVERTER_RATE_PER_YEAR) * onset)
    return severity0, (AD_THRESHOLD - severity0) / onset


def _stable_progression(rng, diagnosis, follow_up_years):
    """Baseline severity and yearly rate that stay in the diagnosis' band until the end."""
    severity0 = rng.uniform(*BASELINE_SEVERITY[diagnosis])
    rate = rng.uniform(*SEVERITY_RATE_PER_YEAR[diagnosis])
    upper = {"CN": BASELINE_SEVERITY["MCI"][0], "MCI": AD_THRESHOLD}.get(diagnosis)
    if upper is not None and follow_up_years > 0:
        rate = min(rate, 0.99 * (upper - severity0) / follow_up_years)
    return severity0, rate
