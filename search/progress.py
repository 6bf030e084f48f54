"""Where a search stands, read from its folder alone: each study's ledger and tally, and what its rungs say.

Reading it needs no Ray cluster and no torch, so that `gru4rec-search status` answers in a second or two.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow.fs

from .ledger import METRICS_FILE, Outcome, TrialRecord, counts, read_results, record
from .settings import SearchSettings
from .spaces import StudyPlan
from .tune_ext import STUDY_KEY, read_trials

LOW_CORRELATION = 0.5  # below this Spearman rho, a rung's ranking says little about the final one


def read_ledgers(settings: SearchSettings, plans: list[StudyPlan]) -> dict[str, list[TrialRecord] | None]:
    """Each study's ledger (one record per trial: those Tune knows of and those a resume kept), None before the
    search has started. Tune's saved state is read once for all (33 MB of JSON at 1,200 trials)."""
    fs, root = pyarrow.fs.FileSystem.from_uri(settings.experiment_uri)
    trials = read_trials(fs, root)
    if trials is None:
        return {plan.name: None for plan in plans}
    return {plan.name: [record(plan.name, t, read_results(fs, f"{root}/{t['dir']}/{METRICS_FILE}"), settings.epochs,
                               plan.space) for t in trials if t["config"].get(STUDY_KEY) == plan.name]
            for plan in plans}


def read_ledger(settings: SearchSettings, plan: StudyPlan) -> list[TrialRecord] | None:
    """One study's ledger (see read_ledgers)."""
    return read_ledgers(settings, [plan])[plan.name]


@dataclass
class StudyProgress:
    """Where a study stands, from its ledger."""

    plan: StudyPlan
    records: list[TrialRecord] | None = None
    tally: dict[Outcome, int] = field(default_factory=dict)

    @property
    def started(self) -> bool:
        return self.records is not None

    @property
    def ended(self) -> int:
        return sum(n for outcome, n in self.tally.items() if outcome != Outcome.RUNNING)

    def finished(self, asked: int) -> bool:
        """Whether every asked trial exists and has ended."""
        return self.started and self.ended >= asked and self.tally.get(Outcome.RUNNING, 0) == 0


def study_progress(settings: SearchSettings, plans: list[StudyPlan]) -> dict[str, StudyProgress]:
    """Where each study stands, by name."""
    ledgers = read_ledgers(settings, plans)
    progress = {}
    for plan in plans:
        records = ledgers[plan.name]
        progress[plan.name] = StudyProgress(plan, records, counts(records) if records is not None else {})
    return progress


def correlation_notes(study: str, correlations: dict[str, float | None]) -> list[str]:
    """One line per study on how well each ASHA rung predicts the final MRR@20, with a warning when it is low."""
    if not correlations:
        return []
    parts = [f"epoch {epoch}: {'-' if rho is None else f'{rho:.2f}'}" for epoch, rho in correlations.items()]
    line = f"- {study}: Spearman rho between the MRR@20 at each ASHA rung and the final one: {', '.join(parts)}"
    low = [epoch for epoch, rho in correlations.items() if rho is not None and rho < LOW_CORRELATION]
    if low:
        line += (f". WARNING: low at epoch {', '.join(low)}: the rungs there may stop good configs "
                 "(raise --grace-period)")
    return [line]
