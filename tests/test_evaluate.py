import numpy as np
import pandas as pd
import pytest
import torch

from gru4rec.config import Config
from gru4rec.data import SessionData
from gru4rec.evaluate import evaluate, ranks_of_targets
from gru4rec.model import GRU4Rec


def test_ranks_in_each_tie_mode():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1],
                           [0.2, 0.2, 0.2, 0.2, 0.2],
                           [0.1, 0.3, 0.2, 0.0, 0.4]])
    targets = torch.tensor([0, 3, 2])
    # Row 0: one higher, two ties. Row 1: all tied. Row 2: two higher, no ties.
    assert ranks_of_targets(scores, targets, "standard").tolist() == [2, 1, 3]
    assert ranks_of_targets(scores, targets, "conservative").tolist() == [4, 5, 3]
    assert ranks_of_targets(scores, targets, "median").tolist() == [3, 3, 3]


@pytest.mark.parametrize("mode", ["standard", "conservative", "median"])
def test_ranks_leave_the_scores_alone_unless_told(mode):
    scores = torch.randn(6, 40)
    scores[:, 7] = scores[:, 3]  # a tie for the rows whose target is 3
    targets = torch.tensor([3, 7, 0, 39, 3, 12])
    before = scores.clone()
    ranks = ranks_of_targets(scores, targets, mode)
    assert torch.equal(scores, before)
    greater = (before > before.gather(1, targets[:, None])).sum(1).double()
    equal = (before == before.gather(1, targets[:, None])).sum(1).double()
    expected = {"standard": greater + 1, "conservative": greater + equal, "median": greater + (equal + 1) / 2}[mode]
    assert ranks.double().tolist() == expected.tolist()
    assert ranks_of_targets(scores, targets, mode, in_place=True).double().tolist() == expected.tolist()


def reference_metrics(model, data, cutoffs, mode):
    """One session at a time, batch of one, NumPy ranking: independent of the session-parallel code."""
    ranks = []
    with torch.no_grad():
        for s in range(data.n_sessions):
            seq = data.items[data.offsets[s]:data.offsets[s + 1]]
            hidden = model.init_hidden(1, torch.device("cpu"))
            for cur, nxt in zip(seq[:-1], seq[1:]):
                h = model.step(model.input_table[torch.tensor([cur])], hidden)
                scores = model.score_all(h)[0].numpy()
                t = scores[nxt]
                greater, equal = (scores > t).sum(), (scores == t).sum()
                ranks.append({"standard": greater + 1, "conservative": greater + equal,
                              "median": greater + 0.5 * (equal - 1) + 1}[mode])
    ranks = np.asarray(ranks, float)
    return ({k: np.mean(ranks <= k) for k in cutoffs}, {k: np.mean((ranks <= k) / ranks) for k in cutoffs},
            len(ranks))


@pytest.mark.parametrize("fixed_shapes", [True, False])  # the accelerator path and the CPU path
@pytest.mark.parametrize("mode", ["standard", "conservative", "median"])
@pytest.mark.parametrize("params", [dict(constrained_embedding=True), dict(constrained_embedding=False, embedding=8),
                                    dict(constrained_embedding=False, embedding=0, layers=[12, 6])])
def test_session_parallel_evaluation_matches_one_session_at_a_time(mode, params, fixed_shapes):
    rng = np.random.default_rng(0)
    n_items = 40
    lengths = rng.integers(1, 7, size=30)
    df = pd.DataFrame({"SessionId": np.repeat(np.arange(30), lengths),
                       "ItemId": rng.integers(0, n_items, size=lengths.sum()),
                       "Time": np.arange(lengths.sum(), dtype=float)})
    data = SessionData.from_frame(df, item_ids=pd.Index(np.arange(n_items)))
    model = GRU4Rec(Config(**{"layers": [10], **params}), n_items)
    if mode != "standard":  # create real ties: quantised scores
        with torch.no_grad():
            model.Wy.copy_((model.Wy * 4).round() / 4)
    result = evaluate(model, data, cutoffs=[1, 3, 10], mode=mode, batch_size=4, fixed_shapes=fixed_shapes)
    recall, mrr, n = reference_metrics(model, data, [1, 3, 10], mode)
    assert result.n == n == int((lengths - 1).sum())
    for k in (1, 3, 10):
        assert result.recall[k] == pytest.approx(recall[k], abs=1e-12)
        assert result.mrr[k] == pytest.approx(mrr[k], abs=1e-12)


def test_evaluation_never_stops_early_even_without_sampling():
    model = GRU4Rec(Config(layers=[6], n_sample=0), 5)
    df = pd.DataFrame({"SessionId": [1, 1, 1, 1, 2, 2], "ItemId": [0, 1, 2, 3, 4, 0], "Time": range(6)})
    data = SessionData.from_frame(df, item_ids=pd.Index(range(5)))
    assert evaluate(model, data, batch_size=2).n == 4


@pytest.mark.parametrize("mode", ["standard", "conservative", "median"])
def test_a_model_with_nan_weights_is_an_error_in_every_tie_mode(mode):
    data = SessionData.from_frame(pd.DataFrame({"SessionId": [1, 1, 1, 2, 2], "ItemId": [1, 2, 3, 2, 3],
                                                "Time": [1, 2, 3, 4, 5]}))
    model = GRU4Rec(Config(layers=[4]), data.n_items)
    with torch.no_grad():
        model.Wy[1, 0] = float("nan")
    with pytest.raises(ValueError, match="the model's Wy holds NaN or infinite values"):
        evaluate(model, data, cutoffs=[1, 20], mode=mode)
    with torch.no_grad():  # finite weights whose scores overflow to infinity
        model.Wy[1, 0] = 3e38
        model.Wy[2:, :] = 3e38
    with pytest.raises(ValueError, match="NaN or infinite scores"):
        evaluate(model, data, cutoffs=[1, 20], mode=mode)
