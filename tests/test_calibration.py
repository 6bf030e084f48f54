"""The rank correlation between a rung and the final epoch, and its correction for ASHA's selection."""
import math

import numpy as np
import pytest

from statistics import NormalDist

from search.calibration import (RHO_LOW, CalibratedRungs, PredictedRungs, corrected, rung_correlation,
                                spearman)


def test_spearman_by_hand():
    # ranks (1, 2, 3) against (1, 3, 2): rho = 1 - 6 * 2 / (3 * 8) = 0.5
    assert spearman([7, 8, 9], [0.1, 0.3, 0.2]) == pytest.approx(0.5)
    # ties share their mean rank: (1.5, 1.5, 3) against (1, 2, 3)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1])
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def test_a_range_restricted_sample_by_hand():
    # 9 trials reached the rung (values 1..9, ranks 1..9: sd sqrt(80/12)); the top three went on (ranks 7, 8, 9:
    # sd sqrt(2/3)), so u = sqrt(10); their rho is 0.5, which corrects to 0.5 sqrt(10) / sqrt(1 - 0.25 + 2.5)
    assert corrected(0.5, math.sqrt(10)) == pytest.approx(0.5 * math.sqrt(10) / math.sqrt(3.25))
    # Nine trials reached the rung (values 1..9); the top three went on and ended 0.1, 0.3, 0.2.
    q = NormalDist().inv_cdf
    population = [q(k / 10) for k in range(1, 10)]  # normal scores of ranks 1..9
    x = [q(0.7), q(0.8), q(0.9)]  # the three that went on, scored among the nine
    y = [q(1 / 4), q(3 / 4), q(2 / 4)]  # their final values' ranks (1, 3, 2) among themselves
    mx, my = sum(x) / 3, sum(y) / 3
    r = sum((a - mx) * (b - my) for a, b in zip(x, y)) / math.sqrt(sum((a - mx) ** 2 for a in x) *
                                                                  sum((b - my) ** 2 for b in y))
    sd = lambda v: math.sqrt(sum((a - sum(v) / len(v)) ** 2 for a in v) / len(v))  # noqa: E731
    u = sd(population) / sd(x)
    rc = r * u / math.sqrt(1 - r * r + r * r * u * u)
    expected = 6 / math.pi * math.asin(rc / 2)
    assert rung_correlation(list(range(1, 10)), [7, 8, 9], [0.1, 0.3, 0.2]) == pytest.approx(expected)
    assert 0.5 < expected < 1  # the sample's rho of 0.5 understated it


def test_the_correction_recovers_the_population_correlation_from_asha_s_top_third():
    rng = np.random.default_rng(0)
    rung = rng.normal(size=3000)
    final = 0.7 * rung + math.sqrt(1 - 0.49) * rng.normal(size=3000)
    whole = spearman(rung, final)
    top = np.argsort(rung)[-1000:]  # what a rung with reduction factor 3 lets through
    naive = spearman(rung[top], final[top])
    fixed = rung_correlation(list(rung), list(rung[top]), list(final[top]))
    assert naive < whole - 0.15  # the restricted sample understates it
    assert abs(fixed - whole) < 0.05, (naive, fixed, whole)


def test_the_estimate_ignores_the_scale_of_the_metric():
    rng = np.random.default_rng(1)
    rung = rng.normal(size=600)
    final = 0.6 * rung + 0.8 * rng.normal(size=600)
    top = np.argsort(rung)[-200:]
    plain = rung_correlation(list(rung), list(rung[top]), list(final[top]))
    skewed = rung_correlation(list(np.exp(rung)), list(np.exp(rung[top])), list(np.exp(3 * final[top])))
    assert skewed == pytest.approx(plain)


def test_a_value_that_never_reached_the_rung_is_an_error():
    with pytest.raises(ValueError, match="rung value 5"):
        rung_correlation([1, 2, 3], [1, 2, 5], [1, 2, 3])


def run_study(curves: np.ndarray, rungs=(1, 3, 9), rule=CalibratedRungs) -> tuple[CalibratedRungs, list[int]]:
    """Trials one after another (trial i's MRR@20 after epoch e is curves[i, e - 1]), each stopped at the first
    rung that cuts it; returns the decisions' state and the epochs each trial ran."""
    study = rule(n_epochs=curves.shape[1], rungs=list(rungs), eta=3)
    ran = []
    for i, curve in enumerate(curves):
        epoch = 0
        for epoch, value in enumerate(curve, start=1):
            if not study.decide(f"t{i}", epoch, float(value)):
                break
        ran.append(epoch)
    return study, ran


def landscape(first_to_final: float, n: int = 120, seed: int = 0) -> np.ndarray:
    """Curves of 10 epochs whose first epoch ranks like the final one (1), inversely (-1), or in between."""
    rng = np.random.default_rng(seed)
    final = rng.uniform(0.2, 0.4, size=n)
    first = 0.1 + first_to_final * (final - 0.3) * 0.5 + rng.normal(scale=1e-4, size=n)
    return np.stack([first + (final - first) * min(1.0, e / 3) for e in range(1, 11)], axis=1)


def test_a_first_epoch_that_ranks_perfectly_is_cut_as_asha_cuts():
    study, ran = run_study(landscape(1.0))
    first = study.report()[0]
    assert first.rho == pytest.approx(1.0, abs=0.02) and first.keep == pytest.approx(1 / 3, abs=0.01)
    later = ran[40:]  # once calibrated, about a third of the trials go past epoch 1
    assert 0.2 < sum(e > 1 for e in later) / len(later) < 0.45
    best = int(np.argmax(landscape(1.0)[:, -1]))
    assert ran[best] == 10  # the best config is never cut


def test_a_first_epoch_that_ranks_inversely_cuts_nothing_there():
    study, ran = run_study(landscape(-1.0))
    first = study.report()[0]
    # the trials that ran to the end were also chosen at epochs 3 and 9, on values that rank like the final
    # ones, which the correction (for the choice at this rung) does not undo: rho is pulled towards 0, still
    # far below RHO_LOW, where a rung cuts nothing
    assert first.rho < RHO_LOW - 0.3 and first.keep == 1.0
    later = ran[40:]
    assert all(e > 1 for e in later)  # nobody is stopped after the first epoch any more
    assert study.report()[1].keep == pytest.approx(1 / 3, abs=0.02)  # epoch 3 ranks perfectly: cut there


def test_before_calibration_a_rung_keeps_one_over_root_eta():
    study = CalibratedRungs(n_epochs=10, rungs=[1, 3, 9], eta=3)
    assert study.keep(1) == pytest.approx(3 ** -0.5)
    for i, value in enumerate([0.1, 0.2, 0.3, 0.4]):
        study.record(f"t{i}", 1, value)
    # 0.15 joins them; the cut is their (1 - 0.577) quantile: position 0.4226 x 4 = 1.69 in
    # [0.1, 0.15, 0.2, 0.3, 0.4], 0.15 + 0.69 x 0.05 = 0.1845, above 0.15
    assert not study.decide("t4", 1, 0.15)
    # 0.3 joins: position 0.4226 x 5 = 2.11 in [0.1, 0.15, 0.2, 0.3, 0.3, 0.4], 0.2 + 0.11 x 0.1 = 0.211
    assert study.decide("t5", 1, 0.3)


def test_replaying_the_results_after_a_restart_gives_the_same_decisions():
    curves = landscape(0.6, seed=3)
    study, _ = run_study(curves[:80])
    again = CalibratedRungs(n_epochs=10, rungs=[1, 3, 9], eta=3)
    for epoch, trials in sorted(study.values.items(), reverse=True):  # any order
        for trial, value in trials.items():
            again.record(trial, epoch, value)
    assert again.report() == study.report()
    for i, curve in enumerate(curves[80:]):
        for epoch in (1, 3, 9):
            assert again.decide(f"n{i}", epoch, float(curve[epoch - 1])) == \
                study.decide(f"n{i}", epoch, float(curve[epoch - 1]))


def test_the_prediction_is_the_least_squares_line_with_its_prediction_interval():
    study = PredictedRungs(n_epochs=3, rungs=[1], eta=3)
    first, final = [0.10, 0.12, 0.15, 0.20, 0.22], [0.30, 0.31, 0.36, 0.40, 0.41]
    for i, (x, y) in enumerate(zip(first, final)):
        study.record(f"t{i}", 1, x)
        study.record(f"t{i}", 3, y)
    fit = study.predictor(1)
    slope, intercept = np.polyfit(first, final, 1)
    residuals = np.array(final) - (intercept + slope * np.array(first))
    sd = math.sqrt((residuals ** 2).sum() / 3)
    assert (fit.slope, fit.intercept, fit.sd) == pytest.approx((slope, intercept, sd))
    x = 0.05  # far below the fitted values: the interval widens with the distance
    leverage = 1 / 5 + (x - np.mean(first)) ** 2 / ((np.array(first) - np.mean(first)) ** 2).sum()
    assert fit.upper(x, 1.0) == pytest.approx(intercept + slope * x + sd * math.sqrt(1 + leverage))
    # a trial goes on while its interval reaches the best final so far (0.41)
    cut = (0.41 - intercept) / slope
    assert not study.decide("low", 1, 0.15) and study.decide("high", 1, min(cut, 0.21))


def test_prediction_cuts_a_landscape_that_ranks_perfectly_early_and_keeps_the_best():
    curves = landscape(1.0)
    study, ran = run_study(curves, rule=PredictedRungs)
    later = ran[40:]
    assert sum(e > 1 for e in later) / len(later) < 0.2  # harder than ASHA's third: the prediction is exact
    assert ran[int(np.argmax(curves[:, -1]))] == 10


def test_prediction_keeps_longer_where_the_first_epoch_ranks_inversely():
    study, ran = run_study(landscape(-1.0), rule=PredictedRungs)
    assert study.predictor(1).slope <= 0 and study.report()[0].keep == 1.0
    assert all(e > 1 for e in ran[40:])  # the first epoch stops nobody
    assert study.predictor(3).slope > 0  # epoch 3 ranks like the final one: the cut happens there


def test_prediction_keeps_more_where_the_first_epoch_ranks_loosely():
    tight, _ = run_study(landscape(1.0, seed=4), rule=PredictedRungs)
    noisy = landscape(1.0, seed=4)
    noisy[:, 0] += np.random.default_rng(5).normal(scale=0.03, size=len(noisy))
    loose, ran = run_study(noisy, rule=PredictedRungs)
    assert loose.report()[0].keep > tight.report()[0].keep
