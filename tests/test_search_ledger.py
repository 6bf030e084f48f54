"""The trial ledger: outcomes, per-epoch metrics from result files (truncated or replayed), rung correlations."""
import json

import pyarrow.fs
import pytest

from search.ledger import Outcome, best, classify, counts, read_results, record, rung_correlations, rung_epochs


def results(*mrrs, diverged_at=None):
    rows = [{"mrr@20": m, "recall@20": 2 * m, "epoch": i, "training_iteration": i, "time_total_s": i * 10.0}
            for i, m in enumerate(mrrs, 1)]
    if diverged_at:
        rows.append({"mrr@20": 0.0, "recall@20": 0.0, "epoch": diverged_at, "training_iteration": diverged_at,
                     "diverged": 1})
    return rows


@pytest.mark.parametrize("status,rows,outcome", [
    ("RUNNING", results(0.1), Outcome.RUNNING), ("PENDING", [], Outcome.RUNNING),
    ("ERROR", results(0.1), Outcome.FAILED),
    ("TERMINATED", results(0.1, 0.2, 0.3), Outcome.COMPLETE),
    ("TERMINATED", results(0.1), Outcome.STOPPED),
    ("TERMINATED", results(0.1, 0.2, diverged_at=3), Outcome.DIVERGED),  # diverging in the last epoch is not complete
    ("TERMINATED", results(diverged_at=1), Outcome.DIVERGED),
])
def test_outcomes(status, rows, outcome):
    assert classify(status, rows, 3) == outcome


def test_records_keep_the_latest_line_of_a_replayed_epoch_and_skip_a_truncated_last_line(tmp_path):
    rows = results(0.1, 0.2) + [{"mrr@20": 0.25, "epoch": 2, "training_iteration": 2, "time_total_s": 30.0}] \
        + results(0.1, 0.2, 0.3)[2:]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"mrr@20": 0.4, "epo'
    (tmp_path / "result.json").write_text(text)
    loaded = read_results(pyarrow.fs.LocalFileSystem(), str(tmp_path / "result.json"))
    assert len(loaded) == 4
    r = record("xe_shared", {"trial_id": "t1", "status": "TERMINATED", "config": {"layers": 64, "other": 1}}, loaded, 3,
               ["layers"])
    assert (r.outcome, r.mrr, r.epochs, r.params, r.seconds) == (Outcome.COMPLETE, [0.1, 0.25, 0.3], 3, {"layers": 64},
                                                                  30.0)
    (tmp_path / "bad.json").write_text('{"broken\n{"mrr@20": 0.1}\n')
    with pytest.raises(json.JSONDecodeError):  # a corrupt line in the middle is not a truncated end
        read_results(pyarrow.fs.LocalFileSystem(), str(tmp_path / "bad.json"))


def test_best_prefers_complete_trials_and_diverged_ones_score_zero():
    trials = [record("s", {"trial_id": str(i), "status": "TERMINATED", "config": {}}, rows, 3, [])
              for i, rows in enumerate([results(0.1, 0.2, 0.3), results(0.5), results(0.1, 0.6, diverged_at=3)])]
    assert best(trials).trial_id == "0" and trials[2].final_mrr == 0.0
    assert counts(trials)[Outcome.STOPPED] == 1 and counts(trials)[Outcome.DIVERGED] == 1


def test_rung_correlations():
    assert rung_epochs(10, 1, 3) == [1, 3, 9] and rung_epochs(3, 1, 2) == [1, 2]
    same_order = [results(0.1 * i, 0.2 * i, 0.3 * i) for i in range(1, 6)]
    reversed_first = [results(0.5 - 0.1 * i, 0.2 * i, 0.3 * i) for i in range(5)]
    make = lambda rows: [record("s", {"trial_id": str(i), "status": "TERMINATED", "config": {}}, r, 3, [])  # noqa: E731
                         for i, r in enumerate(rows)]
    assert rung_correlations(make(same_order), 3, 1, 2) == {"1": pytest.approx(1.0), "2": pytest.approx(1.0)}
    assert rung_correlations(make(reversed_first), 3, 1, 2)["1"] == pytest.approx(-1.0)
    assert rung_correlations(make(same_order[:2]), 3, 1, 2) == {"1": None, "2": None}


def test_checkpoint_epochs_are_the_rungs_the_last_epoch_and_enough_between():
    from search.ledger import checkpoint_epochs
    # Rungs of grace period 1 and reduction factor 3 below 10: 1, 3, 9.
    assert checkpoint_epochs(10, 1, 3, 0) == [1, 3, 9, 10]
    assert checkpoint_epochs(10, 1, 3, 6) == [1, 3, 9, 10]  # no gap longer than 6: nothing to add
    assert checkpoint_epochs(10, 1, 3, 5) == [1, 3, 8, 9, 10]  # 3 -> 9 is 6 epochs: one more after 8
    assert checkpoint_epochs(30, 1, 3, 6) == [1, 3, 9, 15, 21, 27, 30]
    assert checkpoint_epochs(12, 4, 2, 3) == [3, 4, 7, 8, 11, 12]  # rungs 4 and 8, and the first gap too
    assert checkpoint_epochs(1, 1, 3, 6) == [1]

