"""The full-size driver benchmark, run as CI runs it (--quick): the real search through its command line, trials
replayed from recorded curves, the driver killed once and resumed; checked against its results file."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK_TRIALS, QUICK_STUDIES = 8, 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("driver-scale")
    out = tmp / "driver_scale.json"
    command = [sys.executable, "bench/driver_scale.py", "--quick", "--out", str(out), "--work", str(tmp / "work")]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    phase = json.loads(out.read_text())["phases"]["local"]
    return {"stdout": proc.stdout, "phase": phase, "check": phase["check"]}


def test_every_study_has_exactly_its_trials_ended(run):
    studies = run["check"]["studies"]
    assert len(studies) == QUICK_STUDIES
    for name, study in studies.items():
        assert study["ended"] == QUICK_TRIALS and study["unfinished"] == 0, name
        assert study["metrics_in_order"] == QUICK_TRIALS, name  # every trial's epochs recorded once, in order
        assert study["optuna_unfinished"] == 0, name


def test_every_optuna_study_holds_exactly_the_ledger_s_trials(run):
    for name, study in run["check"]["studies"].items():
        assert study["optuna_trials"] == QUICK_TRIALS and study["optuna_matches_ledger"], name


def test_no_trial_ran_again_after_its_end(run):
    assert run["check"]["run_after_end"] == []


def test_no_trial_ran_from_epoch_1_twice(run):
    assert run["check"]["run_from_epoch_1_twice"] == []


def test_the_driver_was_killed_once_and_resumed_to_the_end(run):
    sessions = run["phase"]["sessions"]
    assert [s["how"] for s in sessions] == ["killed", "finished"]
    resumed = sessions[1]
    assert resumed["to_loaded_s"] > 0 and resumed["loaded_to_first_trial_s"] > 0
    assert run["phase"]["end"]["status_s"] > 0


def test_memory_figures_are_present_and_positive(run):
    milestones = run["phase"]["milestones"]
    assert [m["target"] for m in milestones] == [2, 8, 16]
    for m in milestones:
        # A driver is a Python process with Ray, Tune, Optuna and torch loaded: far above 100 MB.
        assert 100e6 < m["rss_bytes"] <= m["peak_rss_bytes"], m
        assert m["snapshot_s"] and min(m["snapshot_s"]) > 0 and m["upload_s"], m
    assert all(s["peak_rss_bytes"] > 100e6 for s in run["phase"]["sessions"])


def test_storage_figures_are_consistent(run):
    end = run["phase"]["end"]
    assert 0 < end["journal_bytes"] < end["folder_bytes"]
    assert end["written_bytes"] > end["folder_bytes"]  # every byte the folder holds was written during the search


def test_the_tables_are_printed(run):
    lines = run["stdout"].splitlines()
    assert sum(line.startswith("| trials ended |") for line in lines) == 1
    assert sum(line.startswith("| resume 1 | ") for line in lines) == 1
    assert sum(line.startswith("| check | ") for line in lines) == 1


def test_the_replay_is_no_user_option():
    from search.cli import build_parser
    parser = build_parser()
    texts = [parser.format_help()] + [sub.format_help() for action in parser._subparsers._group_actions
                                      for sub in action.choices.values()]
    assert not any("replay" in text or "TRIAL_BODY" in text for text in texts)
