"""A process that trains one config after another (a reused Ray actor) must not keep what earlier ones held."""
import weakref
from pathlib import Path

import pytest

from gru4rec import Config, Trainer, evaluate, free_memory, load_session_data
from gru4rec.checkpoint import save_training_state

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15_100k"
pytestmark = pytest.mark.skipif(not (DATA / "train_tr.tsv").is_file(), reason=f"{DATA} is not present")
SMALL = dict(layers=[64], batch_size=64, n_sample=256)
LARGE = dict(layers=[256], batch_size=512, n_sample=4096, constrained_embedding=False, embedding=0)


def resident_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def trial(params, train, valid, tmp_path) -> weakref.ref:
    """What a search trial does with a config: train some steps, validate, save the state; then end."""
    trainer = Trainer(Config.from_dict(params), train, device="cpu", threads=1)
    trainer.start_epoch()
    for t in range(min(40, trainer.n_steps)):
        trainer.run_step(t)
    evaluate(trainer.model, valid)
    save_training_state(tmp_path / "state.safetensors", trainer.state_dict())
    return weakref.ref(trainer)


def test_a_trainer_is_freed_when_dropped_without_a_garbage_collection(tmp_path):
    import gc
    train = load_session_data(DATA / "train_tr.tsv")
    valid = load_session_data(DATA / "train_valid.tsv", train.item_ids)
    gc.disable()
    try:
        assert trial(SMALL, train, valid, tmp_path)() is None  # no reference cycle keeps it
    finally:
        gc.enable()


def test_memory_after_several_trials_stays_at_that_after_the_first(tmp_path):
    train = load_session_data(DATA / "train_tr.tsv")
    valid = load_session_data(DATA / "train_valid.tsv", train.item_ids)
    after = []
    for params in (SMALL, LARGE, SMALL, SMALL):  # the large one in between sets the peak of temporaries
        trial(params, train, valid, tmp_path)
        free_memory("cpu")
        after.append(resident_mb())
    assert after[-1] <= 1.1 * after[0], after
