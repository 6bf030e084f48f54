"""`gru4rec paropt` through the installed command on a slice of real RSC15 data."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gru4rec.config import Config, read_param_file

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15_100k"
GRU4REC = shutil.which("gru4rec", path=str(Path(sys.executable).parent))
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/rsc15_100k")


def test_four_trials_one_forced_to_fail_and_a_paramfile_run_accepts(tmp_path):
    pd.read_csv(DATA / "train_tr.tsv", sep="\t").iloc[:5000].to_csv(tmp_path / "tr.tsv", sep="\t", index=False)
    pd.read_csv(DATA / "train_valid.tsv", sep="\t").iloc[:3000].to_csv(tmp_path / "va.tsv", sep="\t", index=False)
    space = tmp_path / "space.jsonl"
    # A learning rate of 1e30 makes BPR-max diverge to NaN: that trial must fail and the study go on.
    space.write_text('{"name": "layers", "dtype": "int", "values": [16, 32], "step": 16}\n'
                     '{"name": "learning_rate", "dtype": "categorical", "values": [1e30, 0.1]}\n')
    out = tmp_path / "best.py"
    proc = subprocess.run(
        [GRU4REC, "paropt", tmp_path / "tr.tsv", tmp_path / "va.tsv", "-opf", space, "-fp",
         "loss=bpr-max,n_epochs=1,n_sample=64,batch_size=32", "-nt", "4", "-m", "20", "-fm", "5", "20",
         "-pm", "mrr", "-o", out, "--seed", "1", "-d", "cpu"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    failed = re.findall(r"^Trial \d+: failed \(the loss became nan", text, re.M)
    done = re.findall(r"^Trial \d+: mrr@20 = ([\d.]+)", text, re.M)
    assert failed and done and len(failed) + len(done) == 4
    best = float(re.search(r"^Best mrr@20: ([\d.]+)", text, re.M).group(1))
    assert best == pytest.approx(max(map(float, done)), abs=1e-6)
    assert re.search(r"^Recall@5: [\d.]+ MRR@5: [\d.]+$", text, re.M)
    cfg = Config.from_dict(read_param_file(out))
    assert cfg.learning_rate == 0.1 and cfg.loss == "bpr-max" and cfg.n_sample == 64
    run = subprocess.run([GRU4REC, "run", tmp_path / "tr.tsv", "-pf", out, "-t", tmp_path / "va.tsv", "-d", "cpu"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "Recall@20:" in run.stdout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from gru4rec.datasets.synthetic import SyntheticSpec, write_splits
    return write_splits(tmp_path_factory.mktemp("tiny"), SyntheticSpec(n_events=3000, seed=2))


def test_the_space_may_search_any_parameter_as_in_the_official_paropt(tiny, tmp_path):
    space = tmp_path / "space.jsonl"
    space.write_text('{"name": "loss", "dtype": "categorical", "values": ["cross-entropy", "bpr-max"]}\n'
                     '{"name": "constrained_embedding", "dtype": "categorical", "values": [true, false]}\n'
                     '{"name": "embedding", "dtype": "categorical", "values": ["layersize", 0]}\n'
                     '{"name": "n_epochs", "dtype": "int", "values": [1, 2]}\n'
                     '{"name": "seed", "dtype": "int", "values": [1, 9]}\n')
    out = tmp_path / "best.py"
    proc = subprocess.run([GRU4REC, "paropt", tiny["train_tr"], tiny["train_valid"], "-opf", space, "-fp",
                           "layers=16,n_sample=32,batch_size=16", "-nt", "3", "-o", out, "--seed", "3", "-d", "cpu"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    trials = re.findall(r"^Trial \d+: recall@20 = [\d.]+ \([\d.]+s\) (\{.*\})$", proc.stdout, re.M)
    assert len(trials) == 3 and all("'loss'" in t and "'seed'" in t and "'n_epochs'" in t for t in trials)
    cfg = Config.from_dict(read_param_file(out))
    assert cfg.loss in ("cross-entropy", "bpr-max") and cfg.n_epochs in (1, 2) and cfg.layers == [16]


@pytest.mark.parametrize("extra,needle", [
    (["-fm"], "-fm: give one or more cut-offs"),
    (["-fm", "0", "20"], "-fm 0: a cut-off must be an integer >= 1"),
    (["-m", "0"], "-m 0: a cut-off must be an integer >= 1"),
    (["-nt", "0"], "-nt 0: the number of trials must be >= 1"),
])
def test_bad_cutoffs_stop_before_the_first_trial_and_write_nothing(tiny, tmp_path, extra, needle):
    space = tmp_path / "space.jsonl"
    space.write_text('{"name": "layers", "dtype": "int", "values": [8, 16], "step": 8}\n')
    out = tmp_path / "best.py"
    proc = subprocess.run([GRU4REC, "paropt", tiny["train_tr"], tiny["train_valid"], "-opf", space, "-nt", "2",
                           "-o", out, "-d", "cpu", *extra], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr
    assert "Trial" not in proc.stdout and not out.exists()
