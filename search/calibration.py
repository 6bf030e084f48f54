"""How well a study's early epochs rank its configs, measured on the study itself.

Early stopping is only as good as the early ranking: where the MRR@20 after a rung's epochs orders configs as
their final MRR@20 does, trials can be cut there; where it does not, cutting there loses the best configs.
The trials that ran to the end are the evidence, but ASHA chose them by their rung values: the sample is
range-restricted, which shrinks a correlation measured in it. Thorndike's case II correction undoes that,
given the spread of the rung values of every trial that reached the rung against those that went on (the top
third of 3,000 simulated trials, tests/test_calibration.py: rho 0.44 measured, 0.685 corrected, 0.686 in truth).

Two rules use it: `CalibratedRungs` cuts a share of the trials that grows with the corrected rho, and
`PredictedRungs` predicts each trial's final MRR@20 from its rung value (a regression, which the rung's selection
does not bias) and stops the trials unlikely to beat the study's best.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Callable, Sequence

import numpy as np
import pandas as pd


def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank (as Spearman's rho takes them)."""
    return pd.Series(values, dtype=float).rank(method="average").to_numpy()


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho (Pearson's r of the ranks); None for fewer than 3 pairs or a constant side."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} values against {len(y)}")
    if len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def corrected(r: float, u: float) -> float:
    """Thorndike's case II: the correlation in the whole population from r in a sample selected on the first
    variable, where u is the first variable's standard deviation in the population over that in the sample."""
    return r * u / math.sqrt(1.0 - r * r + r * r * u * u)


def normal_scores(values: Sequence[float]) -> np.ndarray:
    """Van der Waerden scores: the normal quantiles of the ranks, rank / (n + 1)."""
    quantile = np.vectorize(NormalDist().inv_cdf)
    return quantile(ranks(values) / (len(values) + 1))


def rung_correlation(reached: Sequence[float], went_on: Sequence[float], final: Sequence[float]) -> float | None:
    """Spearman's rho between a rung's value and the final one over every trial that reached the rung,
    estimated from the trials that went on to the end (`went_on`: their rung values, paired with `final`)
    and corrected for their having been selected from `reached` (all rung values, theirs included).

    Both sides are taken as normal scores of their ranks (rank-based, like rho, whatever the MRR's
    distribution), the rung side ranked among all that reached it; Thorndike's correction applies to
    Pearson's r there, and r converts to rho as for a bivariate normal, rho = 6/pi asin(r/2).
    None without enough evidence (fewer than 3 trials went on, or no spread).
    """
    if len(went_on) != len(final):
        raise ValueError(f"{len(went_on)} rung values against {len(final)} final ones")
    if len(went_on) < 3:
        return None
    population = normal_scores(reached)
    by_value = dict(zip(reached, population))
    try:
        x = np.array([by_value[v] for v in went_on])
    except KeyError as e:
        raise ValueError(f"rung value {e.args[0]} of a trial that went on is not among those that reached the rung") \
            from None
    y = normal_scores(final)
    if x.std() == 0 or y.std() == 0:
        return None
    r = float(np.corrcoef(x, y)[0, 1])
    r = corrected(r, float(population.std() / x.std()))
    return 6 / math.pi * math.asin(r / 2)


RHO_LOW, RHO_HIGH = 0.5, 0.9  # a rung ranking this badly cuts nothing; this well, cuts as ASHA does
PRIOR_WEIGHT = 0.5  # before a rung is measured it keeps 1/sqrt(eta) of the trials
MIN_FINISHED = 5  # trials run to the end before a rung's correlation is trusted


@dataclass
class RungReport:
    """What one rung decided and why, for `status`."""

    epoch: int
    reached: int
    went_on: int  # of those that reached it, trials that ran to the end
    rho: float | None  # corrected for the selection; None until MIN_FINISHED trials ended
    keep: float  # fraction of the trials reaching the rung that go on
    fit: "Prediction | None" = None  # the prediction of the final value (PredictedRungs)


@dataclass
class CalibratedRungs:
    """One study's early stopping at ASHA's rungs, with each rung cutting as hard as it has shown it may.

    At a rung a trial goes on when its MRR@20 is within the top `keep` of every value recorded there (ASHA's
    rule, where keep = 1/eta). Here keep = eta^-w, w growing from 0 (cut nothing) at a corrected rho of
    RHO_LOW to 1 (ASHA) at RHO_HIGH, rho measured between the rung and the last epoch on the study's own trials
    that ran to the end; until MIN_FINISHED have, w is PRIOR_WEIGHT. Its state is the trials' values only, so
    replaying the trials' results after a restart gives back the same decisions.
    """

    n_epochs: int
    rungs: list[int]
    eta: float
    values: dict[int, dict[str, float]] = field(default_factory=dict)  # epoch -> trial -> MRR@20

    def record(self, trial: str, epoch: int, value: float) -> None:
        """Note a trial's value after an epoch (rungs and the last epoch are kept)."""
        if epoch in self.rungs or epoch == self.n_epochs:
            self.values.setdefault(epoch, {})[trial] = value

    def decide(self, trial: str, epoch: int, value: float) -> bool:
        """Record the value, then whether the trial goes on (always, except at a rung below the cut)."""
        self.record(trial, epoch, value)
        if epoch not in self.rungs:
            return True
        recorded = list(self.values[epoch].values())
        return value >= float(np.percentile(recorded, 100 * (1 - self.keep(epoch))))

    def rho(self, epoch: int) -> float | None:
        """The rung's corrected rank correlation with the last epoch, once MIN_FINISHED trials ended."""
        at_rung, final = self.values.get(epoch, {}), self.values.get(self.n_epochs, {})
        ended = [t for t in final if t in at_rung]
        if len(ended) < MIN_FINISHED:
            return None
        return rung_correlation(list(at_rung.values()), [at_rung[t] for t in ended], [final[t] for t in ended])

    def keep(self, epoch: int) -> float:
        """The fraction of trials the rung lets through."""
        rho = self.rho(epoch)
        weight = PRIOR_WEIGHT if rho is None else min(1.0, max(0.0, (rho - RHO_LOW) / (RHO_HIGH - RHO_LOW)))
        return self.eta ** -weight

    def report(self) -> list[RungReport]:
        """Each rung: trials that reached it, of them how many ran to the end, its rho and its cut."""
        final = self.values.get(self.n_epochs, {})
        return [RungReport(epoch, len(at := self.values.get(epoch, {})), sum(t in final for t in at), self.rho(epoch),
                           self.keep(epoch)) for epoch in self.rungs]


Z_KEEP = 1.64  # a trial goes on while its predicted final MRR@20 is within this many standard errors of the best


@dataclass
class Prediction:
    """The fit of the final MRR@20 on a rung's MRR@20: final = intercept + slope * value, residual sd."""

    n: int
    intercept: float
    slope: float
    sd: float
    mean: float  # of the rung values fitted
    spread: float  # their sum of squared deviations

    def upper(self, value: float, z: float) -> float:
        """The final MRR@20 a trial with this rung value reaches with probability ~ 1 - Phi(z) (prediction
        interval, with the fit's own uncertainty, which grows away from the fitted values)."""
        leverage = 1 / self.n + (value - self.mean) ** 2 / self.spread
        return self.intercept + self.slope * value + z * self.sd * math.sqrt(1 + leverage)


@dataclass
class PredictedRungs(CalibratedRungs):
    """Early stopping that predicts each trial's final MRR@20 from its rung value and stops it when it is
    unlikely to beat the study's best final so far.

    The prediction is the least-squares line of the final value on the rung value over the study's trials that
    ran to the end. The rung has selected those trials on their rung values only, and a regression of y on x
    stays unbiased under selection on x (unlike a correlation), so no correction is needed. A trial goes on when
    the upper end of its prediction interval (Z_KEEP standard errors) reaches the best final so far: a rung that
    predicts well (small residuals) cuts hard, one that predicts badly cuts little, and a rung whose values do
    not rise with the final ones (slope <= 0) cuts nothing. Until MIN_FINISHED trials have ended, a rung keeps
    1/sqrt(eta) of its trials, as CalibratedRungs does before it has measured the rung.
    """

    def predictor(self, epoch: int) -> Prediction | None:
        """The rung's fit, once MIN_FINISHED trials that reached it have ended with spread on both sides."""
        at_rung, final = self.values.get(epoch, {}), self.values.get(self.n_epochs, {})
        ended = [t for t in final if t in at_rung]
        if len(ended) < MIN_FINISHED:
            return None
        x = np.array([at_rung[t] for t in ended])
        y = np.array([final[t] for t in ended])
        spread = float(((x - x.mean()) ** 2).sum())
        if spread == 0:
            return None
        slope = float(((x - x.mean()) * (y - y.mean())).sum() / spread)
        intercept = float(y.mean() - slope * x.mean())
        residuals = y - intercept - slope * x
        sd = float(math.sqrt((residuals ** 2).sum() / (len(x) - 2)))
        return Prediction(len(x), intercept, slope, sd, float(x.mean()), spread)

    def rule(self, epoch: int) -> Callable[[float], bool] | None:
        """Whether a trial with a given value at the rung goes on, by the rung's fit; None before it has one."""
        fit = self.predictor(epoch)
        if fit is None:
            return None
        if fit.slope <= 0:
            return lambda value: True
        best = max(self.values[self.n_epochs].values())
        return lambda value: fit.upper(value, Z_KEEP) >= best

    def decide(self, trial: str, epoch: int, value: float) -> bool:
        self.record(trial, epoch, value)
        if epoch not in self.rungs:
            return True
        goes_on = self.rule(epoch)
        return super().decide(trial, epoch, value) if goes_on is None else goes_on(value)

    def keep(self, epoch: int) -> float:
        """The fraction of the trials recorded at the rung that its rule lets through now."""
        goes_on = self.rule(epoch)
        if goes_on is None:
            return super().keep(epoch)
        recorded = list(self.values.get(epoch, {}).values())
        return sum(map(goes_on, recorded)) / len(recorded) if recorded else 1.0

    def report(self) -> list[RungReport]:
        reports = super().report()
        for r in reports:
            r.fit = self.predictor(r.epoch)
        return reports


RUNG_RULES = {"calibrated": CalibratedRungs, "predicted": PredictedRungs}  # the early stopping kinds but "asha"


def from_histories(histories: dict[str, list[float]], n_epochs: int, rungs: list[int], eta: float,
                   kind: type[CalibratedRungs] = CalibratedRungs) -> CalibratedRungs:
    """The decisions' state from the trials' MRR@20 per epoch (for a resume, and for `status`)."""
    study = kind(n_epochs, rungs, eta)
    for trial, values in histories.items():
        for epoch, value in enumerate(values, start=1):
            study.record(trial, epoch, value)
    return study


def describe(report: list[RungReport]) -> str:
    """One line: at each rung, what it measured and how many it lets through."""
    parts = [f"epoch {r.epoch}: {r.reached} reached, {r.went_on} ran to the end, rho "
             f"{'not measured yet' if r.rho is None else f'{r.rho:.2f}'}"
             + ("" if r.fit is None else f", final = {r.fit.intercept:.4f} + {r.fit.slope:.2f} x value "
                f"(sd {r.fit.sd:.4f})") + f", keeps {100 * r.keep:.0f}%" for r in report]
    return "; ".join(parts)
