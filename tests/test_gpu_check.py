"""The CUDA path made checkable: `bench/gpu_check.py --device cpu --quick` run as CI runs it, and the switches and
sizing of the CUDA path (graph capture off, TF32, the evaluation's score chunk, captured steps' lifetime) as far
as a CPU can check them."""
import gc
import json
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from gru4rec import cli
from gru4rec.config import Config
from gru4rec.data import SessionData
from gru4rec.datasets.synthetic import SyntheticSpec, generate_sessions, split_by_time, write_splits
from gru4rec.evaluate import CUDA_SCORE_CAP, SCORE_BUDGET, evaluate, score_budget
from gru4rec.model import GRU4Rec
from gru4rec.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "bench"))
import gpu_check  # noqa: E402

PARTS = ["data", "parity", "graphs", "speed", "evaluation", "memory", "trials"]
SMALL = Config(layers=[16], batch_size=16, n_sample=32)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick CPU run's JSON report and Markdown text."""
    out = tmp_path_factory.mktemp("gpu-check")
    command = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick", "--out", str(out)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


@pytest.fixture(scope="module")
def splits():
    train, test = split_by_time(generate_sessions(SyntheticSpec(n_events=3000, n_items=100, seed=3)), days=3)
    train_data = SessionData.from_frame(train)
    return train_data, SessionData.from_frame(test, train_data.item_ids)


def test_quick_run_reports_every_part_with_figures_and_none_failed(quick):
    report, markdown = quick
    assert list(report["parts"]) == PARTS
    for name, part in report["parts"].items():
        assert part["status"] == "ok", (name, part["error"])
        assert part["rows"], name
        for row in part["rows"]:
            assert any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row.values()), (name, row)
        assert f"## {name}\n\nStatus: **ok**" in markdown
    assert "failed" not in markdown
    assert report["header"]["plan"] == "quick"


def test_quick_run_parity_on_cpu_is_exact_and_passes(quick):
    rows = quick[0]["parts"]["parity"]["rows"]
    judged = [row for row in rows if row["verdict"] != "reference"]
    assert {(row["loss"], row["mode"]) for row in judged} == {(loss, mode) for loss in ("cross-entropy", "bpr-max")
                                                              for mode in ("shared", "none")}
    for row in judged:  # the same seed on the same device, one thread: the same model
        assert row["R@20 rel diff"] == 0.0 and row["MRR@20 rel diff"] == 0.0, row
        assert row["verdict"] == "PASS"
        assert 0 < row["R@20 cpu"] <= 1 and 0 < row["MRR@20 cpu"] <= row["R@20 cpu"]
    assert any(row["verdict"] == "reference" for row in rows)  # the seed spread, for scale


def test_quick_run_repeats_the_steps_exactly_and_frees_the_trainer(quick):
    rows = quick[0]["parts"]["graphs"]["rows"]
    assert len(rows) == 2
    for row in rows:
        assert row["loss rel diff"] == 0.0 and row["max weight diff / max |w|"] == 0.0
        assert row["loss sum graph"] > 0 and row["verdict"] == "PASS"


def test_quick_run_measures_speed_memory_and_packing(quick):
    parts = quick[0]["parts"]
    assert all(row["mb/s"] > 0 and row["events/s"] > 0 for row in parts["speed"]["rows"])
    assert {row["items"] for row in parts["evaluation"]["rows"]} == {gpu_check.QUICK.mid_items,
                                                                     gpu_check.QUICK.big_items,
                                                                     parts["data"]["rows"][0]["items"]}
    memory = parts["memory"]["rows"]
    assert len(memory) == 12 and all(row["status"] == "ok" and row["peak MB"] > 0 for row in memory)
    assert [row["trainers"] for row in parts["trials"]["rows"]] == [1, 2]
    assert all(row["summed events/s"] > 0 for row in parts["trials"]["rows"])


def test_largest_config_takes_the_top_of_each_range_of_a_space():
    config = gpu_check.largest_config(ROOT / "spaces" / "bpr-max.jsonl", "none", gpu_check.Plan())
    assert (config.loss, config.layers, config.batch_size, config.n_sample) == ("bpr-max", [512], 256, 2048)
    assert (config.momentum, config.dropout_p_hidden, config.embedding_mode) == (0.9, 0.7, "none")
    xe = gpu_check.largest_config(ROOT / "spaces" / "xe.jsonl", "separate", gpu_check.Plan())
    assert (xe.loss, xe.logq, xe.embedding, xe.embedding_mode) == ("cross-entropy", 1.0, 512, "separate")


def test_cuda_graphs_on_the_cpu_is_refused_clearly(splits):
    train, test = splits
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        Trainer(SMALL, train, device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        evaluate(GRU4Rec(SMALL, train.n_items), test, cuda_graphs=True)
    eager = evaluate(GRU4Rec(SMALL, train.n_items), test, cuda_graphs=False, fixed_shapes=True)
    assert eager.recall == evaluate(GRU4Rec(SMALL, train.n_items), test).recall


def test_score_chunk_is_the_cpu_budget_on_the_cpu_and_a_share_of_free_memory_on_cuda(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert score_budget(cpu) == score_budget(cpu, free_bytes=80 << 30) == SCORE_BUDGET
    assert score_budget(cuda, free_bytes=4 << 30) == 1 << 27  # an eighth of 4 GiB, as float32 elements
    assert score_budget(cuda, free_bytes=64 << 20) == SCORE_BUDGET  # never below the CPU's
    assert score_budget(cuda, free_bytes=80 << 30) == CUDA_SCORE_CAP
    # free memory as the device reports it, plus what torch caches unused
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 << 30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 << 30)
    assert score_budget(cuda) == (4 << 30) // 32


def test_captured_steps_hold_their_trainer_weakly(splits):
    trainer = Trainer(SMALL, splits[0], device="cpu", threads=1, store_size=4096)
    step = trainer.steps[False]
    trainer.start_epoch()
    trainer.run_step(0)  # runs `step` while the trainer lives
    assert step.calls == 1
    dead = weakref.ref(trainer)
    gc.disable()
    try:
        del trainer
        assert dead() is None  # freed by its reference count alone, the step still alive
    finally:
        gc.enable()
    with pytest.raises(ReferenceError, match="trainer of this step was freed"):
        step()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_splits(tmp_path_factory.mktemp("data"), SyntheticSpec(n_events=2000, n_items=80, seed=5))


def run_recording(monkeypatch, files, *options: str) -> dict:
    """`gru4rec run` with Trainer and evaluate wrapped to record what reaches them."""
    seen: dict = {}

    class Recording(Trainer):
        def __init__(self, *args, **kwargs):
            seen["trainer"] = kwargs.get("cuda_graphs")
            seen["tf32"] = torch.backends.cuda.matmul.allow_tf32
            super().__init__(*args, **kwargs)

    def recording_evaluate(*args, **kwargs):
        seen["evaluate"] = kwargs.get("cuda_graphs")
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(cli, "Trainer", Recording)
    monkeypatch.setattr(cli, "evaluate", recording_evaluate)
    code = cli.main(["run", str(files["train_full"]), "-ps", "layers=8,n_epochs=1,n_sample=16,batch_size=16",
                     "-t", str(files["test"]), "-d", "cpu", *options])
    assert code == 0
    return seen


def test_run_passes_no_cuda_graphs_to_training_and_evaluation(monkeypatch, files, capsys):
    assert run_recording(monkeypatch, files, "--no-cuda-graphs") == {"trainer": False, "evaluate": False,
                                                                      "tf32": False}
    assert run_recording(monkeypatch, files) == {"trainer": None, "evaluate": None, "tf32": False}
    assert "Recall@20" in capsys.readouterr().out


def test_run_turns_tf32_on_for_the_run_only(monkeypatch, files):
    assert not torch.backends.cuda.matmul.allow_tf32
    assert run_recording(monkeypatch, files, "--tf32")["tf32"] is True
    assert not torch.backends.cuda.matmul.allow_tf32
