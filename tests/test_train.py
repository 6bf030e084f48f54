import numpy as np
import pandas as pd
import pytest
import torch

from gru4rec.checkpoint import load_training_state, save_training_state
from gru4rec.config import Config
from gru4rec.cpu import UniqueRows
from gru4rec.data import SessionData
from gru4rec.datasets.synthetic import SyntheticSpec, generate_sessions, split_by_time
from gru4rec.evaluate import evaluate
from gru4rec.model import GRU4Rec
from gru4rec.optim import EPS
from gru4rec.sampling import SampleStore
from gru4rec.train import Trainer, TrainingError


@pytest.fixture(scope="module")
def splits():
    train, test = split_by_time(generate_sessions(SyntheticSpec(n_events=6000, n_items=150, seed=1)), days=3)
    train_data = SessionData.from_frame(train)
    return train_data, SessionData.from_frame(test, train_data.item_ids)


def metrics(trainer, test):
    r = evaluate(trainer.model, test, cutoffs=[5, 20])
    return r.recall[20], r.mrr[20], r.recall[5]


CASES = [
    dict(loss="cross-entropy", logq=1.0, momentum=0.3, dropout_p_hidden=0.3, n_sample=64),
    dict(loss="bpr-max", elu_param=0.5, bpreg=1.0, constrained_embedding=False, embedding=16,
         dropout_p_embed=0.2, layers=[24, 16], n_sample=0),
    dict(loss="bpr-max", elu_param=0.0, constrained_embedding=False, embedding=0, momentum=0.5, n_sample=32),
]


@pytest.mark.parametrize("params", CASES)
def test_same_seed_repeats_exactly_and_resume_after_epoch_3_matches(params, splits, tmp_path):
    train, test = splits
    cfg = Config(**{"layers": [24], "batch_size": 16, "learning_rate": 0.1, **params})
    store = 50 * max(cfg.n_sample, 1)  # small store: refills inside epochs and across the resume point
    full = Trainer(cfg, train, device="cpu", store_size=store)
    losses = []
    full.fit(5, callback=lambda info: losses.append(info.loss))
    again = Trainer(cfg, train, device="cpu", store_size=store)
    again.fit(5)
    assert metrics(full, test) == metrics(again, test)

    first = Trainer(cfg, train, device="cpu", store_size=store)
    first.fit(3)
    save_training_state(tmp_path / "state.safetensors", first.state_dict())
    resumed = Trainer(cfg, train, device="cpu", store_size=store)
    resumed.load_state_dict(load_training_state(tmp_path / "state.safetensors"))
    assert resumed.epoch == 3
    resumed_losses = []
    resumed.fit(5, callback=lambda info: resumed_losses.append(info.loss))
    assert resumed_losses == losses[3:]
    assert metrics(resumed, test) == metrics(full, test)
    for name, p in full.model.state_dict().items():
        assert torch.equal(p, resumed.model.state_dict()[name]), name


def test_model_learns_beyond_popularity(splits):
    train, test = splits
    trainer = Trainer(Config(layers=[32], batch_size=16, n_sample=64, learning_rate=0.1, loss="cross-entropy",
                             logq=1.0), train, device="cpu")
    trainer.fit(4)
    recall = evaluate(trainer.model, test, cutoffs=[5]).recall[5]
    counts = torch.as_tensor(train.item_counts(), dtype=torch.float32)
    pop_hits = np.mean([(counts > counts[t]).sum().item() + 1 <= 5
                        for s in range(test.n_sessions) for t in test.items[test.offsets[s] + 1:test.offsets[s + 1]]])
    assert recall > 1.3 * pop_hits


def test_nan_loss_stops_within_a_few_steps_with_a_clear_error(splits):
    train, _ = splits
    config = Config(layers=[8], batch_size=8, n_sample=8, learning_rate=1e30, loss="bpr-max")
    trainer = Trainer(config, train, device="cpu")
    steps = []
    original = trainer.run_step
    trainer.run_step = lambda t: steps.append(t) or original(t)
    with pytest.raises(TrainingError, match=r"the loss became nan by step (\d+) of epoch 1") as info:
        trainer.fit(1)
    assert trainer.n_steps > 200 and len(steps) <= 64  # noticed at the first check, not at the end of the epoch


# --- An independent, straightforward implementation: the original's shrinking batches, dense autograd
# gradients on the full tables, and the optimiser applied to the unique touched rows.

def reference_epochs(cfg, data, n_epochs, store_size):
    model = GRU4Rec(cfg, data.n_items)
    gen = torch.Generator().manual_seed(cfg.seed)
    counts = data.item_counts()
    store = SampleStore(counts, cfg.sample_alpha, cfg.n_sample, gen, torch.device("cpu"), store_size)
    pop = torch.as_tensor(counts, dtype=torch.float32)
    params = dict(model.named_parameters())
    acc = {k: torch.zeros_like(p) for k, p in params.items()}
    mom = {k: torch.zeros_like(p) for k, p in params.items()}
    step_losses = []
    for _ in range(n_epochs):
        slots = list(range(min(cfg.batch_size, data.n_sessions)))
        pos = [data.offsets[s] for s in slots]
        next_session = len(slots)
        hidden = model.init_hidden(len(slots), torch.device("cpu"))
        while slots:
            inp = torch.tensor([data.items[p] for p in pos])
            out = torch.tensor([data.items[p + 1] for p in pos])
            sample = store.next() if cfg.n_sample else torch.zeros(0, dtype=torch.int64)
            cols = torch.cat([out, sample])
            table = model.input_table
            h = model.step(table[inp], hidden)
            O = h @ model.Wy[cols].T + model.By[cols]
            b = len(slots)
            if cfg.loss == "cross-entropy":
                q = torch.cat([pop[out], pop[sample] ** cfg.sample_alpha])
                O = O - cfg.logq * torch.log(q)
                X = torch.softmax(O, dim=1)
                loss = -torch.log(torch.diagonal(X) + 1e-24).sum()
            else:
                if cfg.elu_param > 0:
                    O = torch.nn.functional.elu(O, cfg.elu_param)
                mask = torch.ones_like(O)
                mask[:, :b] -= torch.eye(b)
                e = torch.exp(O - O.max(dim=1, keepdim=True)[0]) * mask
                s = e / e.sum(dim=1, keepdim=True)
                sig = torch.sigmoid(torch.diagonal(O)[:, None] - O)
                loss = (-torch.log((sig * s).sum(1) + 1e-24) + cfg.bpreg * (O ** 2 * s).sum(1)).sum()
            loss = loss / cfg.batch_size
            step_losses.append(loss.item())
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                touched = {"Wy": torch.cat([inp, cols]) if model.mode == "shared" else cols, "By": cols,
                           "E": inp, "Wx0": inp}
                for k, p in params.items():
                    rows = torch.unique(touched[k]) if k in touched else slice(None)
                    g = p.grad[rows]
                    acc[k][rows] += g * g
                    d = torch.sqrt(acc[k][rows] + EPS)
                    if cfg.momentum > 0:
                        mom[k][rows] = cfg.momentum * mom[k][rows] - cfg.learning_rate * g / d
                        p[rows] += mom[k][rows]
                    else:
                        p[rows] -= cfg.learning_rate * g / d
            hidden = [x.detach() for x in hidden]
            keep = []
            for i in range(len(slots)):
                pos[i] += 1
                if pos[i] + 1 < data.offsets[slots[i] + 1]:
                    keep.append(i)
                    continue
                while (next_session < data.n_sessions
                       and data.offsets[next_session + 1] - data.offsets[next_session] < 2):
                    next_session += 1
                if next_session < data.n_sessions:
                    slots[i], pos[i] = next_session, data.offsets[next_session]
                    next_session += 1
                    for x in hidden:
                        x[i] = 0
                    keep.append(i)
            slots = [slots[i] for i in keep]
            pos = [pos[i] for i in keep]
            hidden = [x[keep] for x in hidden]
            if cfg.n_sample == 0 and len(slots) < 2:
                break
    return model, step_losses


@pytest.mark.parametrize("params", [
    dict(loss="cross-entropy", logq=1.0, momentum=0.2, n_sample=20),
    dict(loss="bpr-max", elu_param=1.0, bpreg=0.5, n_sample=20, constrained_embedding=False, embedding=6),
    dict(loss="bpr-max", elu_param=0.5, bpreg=1.0, n_sample=0, constrained_embedding=False, embedding=0),
    dict(loss="cross-entropy", logq=0.5, momentum=0.3, n_sample=10, constrained_embedding=False, embedding=0,
         layers=[8, 5]),
])
@pytest.mark.parametrize("unique_rows", ["marks", "sort", None])  # the CPU paths and the accelerator path
def test_padded_fixed_shape_training_matches_straightforward_shrinking_batches(params, unique_rows):
    rng = np.random.default_rng(5)
    lengths = rng.integers(2, 9, size=25)
    df = pd.DataFrame({"SessionId": np.repeat(np.arange(25), lengths),
                       "ItemId": rng.integers(0, 30, size=lengths.sum()),
                       "Time": np.arange(lengths.sum(), dtype=float)})
    data = SessionData.from_frame(df)
    cfg = Config(**{"layers": [8], "batch_size": 6, "learning_rate": 0.1, **params})
    ref_model, ref_losses = reference_epochs(cfg, data, 2, store_size=200)
    trainer = Trainer(cfg, data, device="cpu", store_size=200)
    trainer.unique_rows = None if unique_rows is None else UniqueRows(data.n_items + 1, unique_rows == "marks")
    losses = []
    for _ in range(2):
        trainer.start_epoch()
        losses += [trainer.run_step(t).item() for t in range(trainer.n_steps)]
    assert len(losses) == len(ref_losses)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4, atol=1e-6)
    for name, p in ref_model.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[name], p, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("size", [10, 5000])
def test_unique_rows_by_marks_or_by_sorting_match_torch_unique(size):
    values = torch.randint(0, size, (300,), generator=torch.Generator().manual_seed(size))
    expected_rows, expected_inverse = torch.unique(values, return_inverse=True)
    for by_marks in (True, False):
        unique = UniqueRows(size, by_marks)
        for _ in range(2):  # the marks are left clean for the next call
            rows, inverse = unique(values)
            assert torch.equal(rows, expected_rows) and torch.equal(inverse, expected_inverse)
    assert UniqueRows.worth_marking(2800, 2112) and not UniqueRows.worth_marking(1_000_000, 2112)


def test_the_thread_count_does_not_change_the_model(splits):
    """The automatic thread choice only changes speed: one and two threads train the same model."""
    train, _ = splits
    cfg = Config(layers=[24], batch_size=16, n_sample=64, learning_rate=0.1, momentum=0.2, dropout_p_hidden=0.2,
                 loss="bpr-max")
    states = []
    for threads in (1, 2):
        trainer = Trainer(cfg, train, device="cpu", threads=threads)
        trainer.fit(2)
        states.append(trainer.model.state_dict())
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name


def test_thread_choice_keeps_the_fastest_count():
    from gru4rec.cpu import ThreadChoice
    previous = torch.get_num_threads()
    choice = ThreadChoice([1, 2], rounds=2, chunk=2, warmup=1)
    used = []

    def step():  # a step that is slow with two threads
        used.append(torch.get_num_threads())
        if used[-1] == 2:
            sum(range(200_000))

    try:
        while choice.chosen is None:
            choice.run(step)
        timed = used[1:]  # after the untimed warm-up step
        assert choice.chosen == 1 and timed.count(1) == 4 and timed.count(2) == 4
        choice.run(step)
        assert used[-1] == 1
    finally:
        torch.set_num_threads(previous)


def test_training_gives_back_the_thread_count(splits):
    """The thread count chosen for training steps does not leak into the evaluation that follows."""
    train, _ = splits
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        trainer = Trainer(Config(layers=[16], batch_size=8, n_sample=16), train, device="cpu", threads=1)
        seen = []
        trainer.fit(1, callback=lambda info: seen.append(torch.get_num_threads()))
        assert seen == [2]
    finally:
        torch.set_num_threads(previous)


def test_trainers_share_no_state(splits):
    """Two trainers of different shapes stepping in turn give what each gives alone (no cached constants)."""
    train, _ = splits
    configs = [Config(layers=[16], batch_size=6, n_sample=20, loss="bpr-max"),
               Config(layers=[16], batch_size=9, n_sample=30, loss="bpr-max", elu_param=1.0)]

    def losses(trainers):
        out = [[] for _ in trainers]
        for trainer in trainers:
            trainer.start_epoch()
        for t in range(40):
            for i, trainer in enumerate(trainers):
                out[i].append(trainer.run_step(t).item())
        return out

    together = losses([Trainer(c, train, device="cpu", threads=1) for c in configs])
    alone = [losses([Trainer(c, train, device="cpu", threads=1)])[0] for c in configs]
    assert together == alone


def test_a_state_saved_on_another_device_kind_continues(splits, tmp_path):
    """A CUDA generator state (16 bytes) cannot drive a CPU generator: training continues reseeded."""
    train, test = splits
    cfg = Config(layers=[16], batch_size=16, n_sample=32, momentum=0.2)
    first = Trainer(cfg, train, device="cpu", store_size=3200)
    first.fit(2)
    state = first.state_dict()
    foreign = {**state, "generator": torch.arange(16, dtype=torch.uint8),
               "store": {"fill_state": torch.arange(16, dtype=torch.uint8), "ptr": 7}}
    save_training_state(tmp_path / "state.safetensors", foreign)
    resumed = Trainer(cfg, train, device="cpu", store_size=3200)
    resumed.load_state_dict(load_training_state(tmp_path / "state.safetensors"))
    assert resumed.epoch == 2
    for name, p in first.model.state_dict().items():
        assert torch.equal(p, resumed.model.state_dict()[name]), name
    resumed.fit(3)
    assert resumed.epoch == 3 and np.isfinite(metrics(resumed, test)[1])


def test_int64_index_arrays_train_and_evaluate_exactly_as_int32(splits, monkeypatch):
    """Catalogues past 2^31 items use int64 data and schedules; forced here, they must change nothing."""
    train, test = splits
    config = Config.from_dict(dict(CASES[0], layers=[32], batch_size=16, n_epochs=2))
    compact = Trainer(config, train, device="cpu", threads=1)
    assert compact.inputs.dtype == torch.int32 and train.items.dtype == np.int32
    losses = [compact.train_epoch().loss for _ in range(2)]
    import gru4rec.batching
    monkeypatch.setattr(gru4rec.batching, "index_dtype", lambda largest: np.dtype(np.int64))
    wide_train = SessionData(train.items.astype(np.int64), train.offsets.astype(np.int64), train.item_ids)
    wide_test = SessionData(test.items.astype(np.int64), test.offsets.astype(np.int64), test.item_ids)
    wide = Trainer(config, wide_train, device="cpu", threads=1)
    assert wide.inputs.dtype == torch.int64
    assert [wide.train_epoch().loss for _ in range(2)] == losses
    for name, tensor in compact.model.state_dict().items():
        assert torch.equal(tensor, wide.model.state_dict()[name]), name
    assert metrics(wide, wide_test) == metrics(compact, test)
