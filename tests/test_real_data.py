"""Accuracy on real data: RSC15 (100k sample), train_full -> test, published best parameters, 10 epochs."""
from pathlib import Path

import numpy as np
import pytest
import torch

from gru4rec.config import Config
from gru4rec.data import load_session_data
from gru4rec.evaluate import evaluate, ranks_of_targets
from gru4rec.train import Trainer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15_100k"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/rsc15_100k")

RSC15_XE = dict(loss="cross-entropy", constrained_embedding=True, embedding=0, elu_param=0, layers=[100],
                n_epochs=10, batch_size=32, dropout_p_embed=0.0, dropout_p_hidden=0.4, learning_rate=0.2,
                momentum=0.2, n_sample=2048, sample_alpha=0.5, bpreg=0.0, logq=1.0)
RSC15_BPR = {**RSC15_XE, "loss": "bpr-max", "elu_param": 1.0, "bpreg": 1.0, "logq": 0.0, "learning_rate": 0.05}
OFFICIAL_XE = {"recall": 0.683, "mrr": 0.360}  # official implementation, same machine kind, params and ties


@pytest.fixture(scope="module")
def rsc15():
    train = load_session_data(DATA / "train_full.tsv")
    return train, load_session_data(DATA / "test.tsv", train.item_ids)


def popularity_baseline(train, test):
    """Most-popular-item recommender: every item scored by its training count, conservative ties."""
    counts = torch.as_tensor(train.item_counts(), dtype=torch.float32)
    bounds = zip(test.offsets[:-1], test.offsets[1:])
    targets = torch.as_tensor(np.concatenate([test.items[a + 1:b] for a, b in bounds]))
    ranks = ranks_of_targets(counts.expand(len(targets), -1), targets, "conservative")
    return (ranks <= 20).float().mean().item(), ((ranks <= 20) / ranks).mean().item()


def train_and_evaluate(params, train, test):
    trainer = Trainer(Config(**params), train, device="cpu")
    trainer.fit(callback=lambda info: print(info.line()))
    return evaluate(trainer.model, test, cutoffs=[20], mode="conservative")


def test_cross_entropy_matches_the_official_implementation(rsc15):
    train, test = rsc15
    result = train_and_evaluate(RSC15_XE, train, test)
    pop_recall, pop_mrr = popularity_baseline(train, test)
    print(f"xe: Recall@20 {result.recall[20]:.4f} MRR@20 {result.mrr[20]:.4f} | "
          f"popularity: Recall@20 {pop_recall:.4f} MRR@20 {pop_mrr:.4f}")
    assert result.recall[20] >= 0.65 and result.mrr[20] >= 0.34
    assert result.recall[20] == pytest.approx(OFFICIAL_XE["recall"], rel=0.02)
    assert result.mrr[20] == pytest.approx(OFFICIAL_XE["mrr"], rel=0.02)
    assert result.recall[20] >= 2 * pop_recall and result.mrr[20] >= 2 * pop_mrr


def test_bpr_max_beats_popularity_twice(rsc15):
    train, test = rsc15
    result = train_and_evaluate(RSC15_BPR, train, test)
    pop_recall, pop_mrr = popularity_baseline(train, test)
    print(f"bpr-max: Recall@20 {result.recall[20]:.4f} MRR@20 {result.mrr[20]:.4f}")
    assert result.recall[20] >= 0.65 and result.mrr[20] >= 0.34
    assert result.recall[20] >= 2 * pop_recall and result.mrr[20] >= 2 * pop_mrr
