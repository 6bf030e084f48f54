"""The memory model against the same allocations measured on the CPU.

Persistent parts are the storages the trainer holds after a few steps. Transient parts are measured as the
peak of the bytes alive, counted op by op with a dispatch mode (no CUDA needed). The CUDA code path (scratch
tables instead of unique rows, every evaluation slot stepped) is run on the CPU by switching off the CPU-only
shortcuts, as the trainer does on an accelerator.
"""
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from gru4rec import Config, GRU4Rec, SessionData, Trainer, evaluate, load_session_data, trial_memory
from gru4rec.evaluate import CUDA_SCORE_CAP, EVAL_BATCH, SCORE_BUDGET
from gru4rec.memory import CUDA_CONTEXT, parameter_counts

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15_100k" / "train_tr.tsv"
real_data = pytest.mark.skipif(not DATA.is_file(), reason=f"{DATA} is not present")


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the storages that ops allocate while it is active, and their peak."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage address -> [bytes, tensors referring to it]
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor.untyped_storage().nbytes() == 0:
                continue
            address = tensor.untyped_storage().data_ptr()
            if address not in self.live:
                if address in inputs:  # in place, or a view of a storage made before
                    continue
                self.live[address] = [tensor.untyped_storage().nbytes(), 0]
                self.now += self.live[address][0]
                self.peak = max(self.peak, self.now)
            self.live[address][1] += 1
            weakref.finalize(tensor, self._drop, address)
        return out

    def _drop(self, address: int) -> None:
        entry = self.live[address]
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[address]
            self.now -= entry[0]


def nbytes(*tensors) -> int:
    """Bytes of the distinct storages of the tensors."""
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def reachable_tensors(*roots) -> list[torch.Tensor]:
    """Every tensor held by the roots' attributes, dicts and lists (one level of helper objects deep)."""
    found, seen = [], set()

    def visit(value, depth: int) -> None:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                visit(v, depth)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v, depth)
        elif hasattr(value, "__dict__") and depth > 0 and id(value) not in seen:
            seen.add(id(value))
            for v in vars(value).values():
                visit(v, depth - 1)

    for root in roots:
        visit(root, 2)
    return found


def measured_parts(trainer: Trainer) -> dict[str, int]:
    """The persistent parts as the trainer holds them."""
    model, opt, store = trainer.model, trainer.optimizer, trainer.store
    tables = model.item_tables()
    marks = [trainer.unique_rows.marks] if trainer.unique_rows is not None and trainer.unique_rows.marks is not None \
        else []
    return {
        "item_tables": nbytes(*tables),
        "item_state": nbytes(*[opt.acc[id(t)] for t in tables], *[opt.mom[id(t)] for t in tables if id(t) in opt.mom]),
        "dense": nbytes(*model.dense_parameters(), opt.dense_acc, *[opt.dense_mom] * (opt.dense_mom.numel() > 0),
                        *trainer.hidden, trainer.valid),
        "scratch": nbytes(*opt.scratch.values(), *marks),
        "schedule": nbytes(trainer.inputs, trainer.targets, trainer.resets, trainer.n_active),
        "sampling": nbytes(*[store.store] * (store.store.numel() > 0), store.cdf, trainer.target_log_q,
                           trainer.sample_log_q),
    }


def on_cuda_path(trainer: Trainer) -> Trainer:
    """Make the trainer take the code path it takes on CUDA: no unique rows, duplicates merged in scratch."""
    trainer.unique_rows = None
    trainer.optimizer.merge_by_unique = False
    return trainer


def generated(n_items: int, n_sessions: int, seed: int = 0, mean_length: float = 4.0) -> SessionData:
    """Sessions of geometric length (at least 2) over `n_items` items, popularity Zipf-like."""
    rng = np.random.default_rng(seed)
    lengths = 1 + rng.geometric(1 / mean_length, n_sessions)
    popularity = 1 / np.arange(1, n_items + 1)
    items = rng.choice(n_items, lengths.sum(), p=popularity / popularity.sum()).astype(np.int32)
    items[:n_items] = np.arange(n_items)  # every item occurs
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return SessionData(items=items, offsets=offsets, item_ids=pd.Index(np.arange(n_items)), source="generated")


@pytest.fixture(scope="module")
def rsc15() -> SessionData:
    return load_session_data(DATA)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the trainer's CPU work stays small, and the store refills in one piece."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CONFIGS = [
    dict(layers=[64], batch_size=32, n_sample=0, momentum=0.0),
    dict(layers=[96], batch_size=64, n_sample=512, momentum=0.5),
    dict(layers=[64], batch_size=256, n_sample=2048, momentum=0.9, constrained_embedding=False, embedding=48),
    dict(layers=[48, 32], batch_size=128, n_sample=1024, momentum=0.0, constrained_embedding=False),
    dict(layers=[128], batch_size=96, n_sample=256, momentum=0.3, constrained_embedding=False, loss="bpr-max"),
]


def trained(config: Config, data: SessionData, cuda_path: bool, steps: int = 4) -> Trainer:
    trainer = Trainer(config, data, device="cpu", threads=1)
    if cuda_path:
        on_cuda_path(trainer)
    trainer.start_epoch()
    for t in range(steps):
        trainer.run_step(t)
    return trainer


def check_persistent(config: Config, data: SessionData, cuda_path: bool) -> None:
    trainer = trained(config, data, cuda_path)
    estimate = trial_memory(config, data.n_items, data.n_events, data.n_sessions,
                            device="cuda" if cuda_path else "cpu")
    measured = measured_parts(trainer)
    for part, size in measured.items():  # the schedule's tail is modelled, within 10% even on small data
        assert getattr(estimate, part) == pytest.approx(size, rel=0.10 if part == "schedule" else 0.01, abs=64), part
    # The parts cover everything the trainer holds, apart from scalars and the generator state of the last refill.
    everything = nbytes(*reachable_tensors(trainer, trainer.model, trainer.optimizer, trainer.store))
    assert everything == pytest.approx(sum(measured.values()), abs=8 << 10)
    without_device = estimate.persistent - estimate.context - estimate.step_pools
    assert without_device == pytest.approx(everything, rel=0.05)


@real_data
@pytest.mark.parametrize("params", CONFIGS)
@pytest.mark.parametrize("cuda_path", [False, True])
def test_persistent_parts_match_the_trainer_on_real_data(rsc15, params, cuda_path):
    check_persistent(Config.from_dict(params), rsc15, cuda_path)


@pytest.mark.parametrize("params", CONFIGS[1:4])
def test_persistent_parts_match_the_trainer_on_generated_data(params):
    check_persistent(Config.from_dict(params), generated(20_000, 6_000), cuda_path=True)


def test_parameter_counts_are_the_models():
    for params in CONFIGS:
        config = Config.from_dict(params)
        model = GRU4Rec(config, 500)
        tables, largest, dense = parameter_counts(config, 500)
        assert tables == sum(p.numel() for p in model.item_tables())
        assert largest == max(p.numel() for p in model.item_tables())
        assert dense == sum(p.numel() for p in model.dense_parameters())


def test_without_session_count_the_schedule_is_an_upper_bound():
    data = generated(5_000, 4_000)
    for batch_size in (32, 256):
        config = Config(batch_size=batch_size, n_sample=64)
        trainer = Trainer(config, data, device="cpu", threads=1)
        held = nbytes(trainer.inputs, trainer.targets, trainer.resets, trainer.n_active)
        assert trial_memory(config, data.n_items, data.n_events).schedule >= held


@real_data
@pytest.mark.parametrize("params", CONFIGS)
def test_step_temporaries_match_a_measured_step(rsc15, params):
    """On the CUDA path the estimate is the step's peak within 10%; the CPU path (unique rows) is near it."""
    config = Config.from_dict(params)
    for cuda_path in (True, False):
        trainer = trained(config, rsc15, cuda_path)
        counter = LiveBytes()
        with counter:
            trainer.run_step(4)
        assert counter.now == 0  # nothing of the step outlives it
        estimate = trial_memory(config, rsc15.n_items, rsc15.n_events, rsc15.n_sessions,
                                device="cuda" if cuda_path else "cpu")
        if cuda_path:
            assert estimate.step == pytest.approx(counter.peak, rel=0.10)
            assert estimate.step_pools == 2 * estimate.step
        else:
            assert estimate.step == pytest.approx(counter.peak, rel=0.20)


@pytest.mark.parametrize("params", [CONFIGS[1], CONFIGS[2]])
def test_refill_and_checkpoint_copies_match(params):
    config = Config.from_dict(params)
    data = generated(3_000, 2_000)
    trainer = trained(config, data, cuda_path=True)
    estimate = trial_memory(config, data.n_items, data.n_events, data.n_sessions)
    counter = LiveBytes()
    with counter:
        trainer.store._fill()  # a refill: new draws and indices beside the store
    assert counter.peak == pytest.approx(estimate.refill, rel=0.01)
    counter = LiveBytes()
    with counter:
        state = trainer.state_dict()
    assert counter.peak == pytest.approx(estimate.checkpoint, rel=0.01)
    assert nbytes(*state["optimizer"].values()) == estimate.checkpoint


def measured_evaluation(config: Config, n_items: int) -> int:
    """Peak bytes of `evaluate` with every slot stepped (as on CUDA), on two short sessions."""
    model = GRU4Rec(config, n_items)
    valid = SessionData(items=np.array([1, 2, 3, 4, 5, 6], dtype=np.int32), offsets=np.array([0, 3, 6]),
                        item_ids=pd.Index(np.arange(n_items)))
    counter = LiveBytes()
    with counter:
        evaluate(model, valid, fixed_shapes=True)
    return counter.peak


def test_evaluation_with_two_score_chunks_alive():
    """Above SCORE_BUDGET / EVAL_BATCH items a step scores several chunks, two alive at the handover."""
    n_items = 70_000
    config = Config(layers=[16], n_sample=0)
    chunk = SCORE_BUDGET // n_items
    assert chunk < EVAL_BATCH
    estimate = trial_memory(config, n_items, 10 * n_items, device="cpu").evaluation
    assert estimate >= EVAL_BATCH * n_items * 4  # a full chunk and the rest of the slots' rows
    assert estimate == pytest.approx(measured_evaluation(config, n_items), rel=0.05)


def test_evaluation_of_a_small_catalogue_and_its_nan_check():
    small = Config(layers=[64], n_sample=0)
    estimate = trial_memory(small, 3_000, 30_000, device="cpu").evaluation
    assert estimate == trial_memory(small, 3_000, 30_000).evaluation  # one chunk of all slots on CUDA too
    assert estimate >= EVAL_BATCH * 3_000 * 4  # one chunk: every slot against every item
    assert estimate == pytest.approx(measured_evaluation(small, 3_000), rel=0.10)
    wide = Config(layers=[1024], n_sample=0, constrained_embedding=False)  # Wx0: 3 * 1024 columns
    estimate = trial_memory(wide, 3_000, 30_000, device="cpu").evaluation
    assert estimate == 7 * 3_001 * 3 * 1024  # torch.isfinite: a float abs copy and three bool tensors
    assert estimate == pytest.approx(measured_evaluation(wide, 3_000), rel=0.05)


def test_million_item_catalogue_figures():
    """The arithmetic at scale: score chunks from the CPU and CUDA budgets, tables and state, CUDA-only parts."""
    config = Config(layers=[512], batch_size=256, n_sample=2048, momentum=0.5)
    cuda = trial_memory(config, 1_000_000, 30_000_000)
    cpu = trial_memory(config, 1_000_000, 30_000_000, device="cpu")
    assert cpu.evaluation >= 2 * (SCORE_BUDGET // 1_000_000) * 1_000_000 * 4  # two chunks of 33 rows alive
    assert cuda.evaluation >= EVAL_BATCH * 1_000_000 * 4  # chunks of CUDA_SCORE_CAP: every slot's row alive
    assert CUDA_SCORE_CAP // 1_000_000 < EVAL_BATCH
    assert cuda.evaluation == cpu.evaluation == 7 * 1_000_001 * 512  # but the NaN check of Wy takes more
    assert cuda.item_tables == 4 * 1_000_001 * 513
    assert cuda.item_state == 2 * cuda.item_tables and cuda.scratch == cuda.item_tables
    assert cuda.checkpoint > cuda.item_state  # accumulators and momenta of every parameter, cloned
    assert cuda.total == cuda.persistent + max(cuda.step, cuda.refill, cuda.evaluation, cuda.checkpoint)
    assert cuda.context == CUDA_CONTEXT and cpu.context == 0 and cpu.scratch == 0 and cpu.step_pools == 0
    assert cuda.schedule == pytest.approx(30_000_000 * 9, rel=0.01)
    assert 12 * 2**30 < cuda.total < 13 * 2**30  # the checkpoint's copies are the largest transient
    assert "peak on cuda" in str(cuda) and len(cuda.lines()) == 13
    with pytest.raises(ValueError, match="device 'mps'"):
        trial_memory(config, 10, 100, device="mps")
