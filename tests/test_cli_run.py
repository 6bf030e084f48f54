"""`gru4rec run` end to end through the installed console command, on a slice of real RSC15 data."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gru4rec.config import read_param_file

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "rsc15_100k"
SPACES = ROOT / "spaces" / "best"
GRU4REC = shutil.which("gru4rec", path=str(Path(sys.executable).parent))
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/rsc15_100k")
SMALL = "layers=32,n_epochs=2,n_sample=128,batch_size=32,learning_rate=0.1,dropout_p_hidden=0.2"


def gru4rec(*args, ok=True):
    proc = subprocess.run([GRU4REC, *map(str, args)], capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def metrics(stdout):
    """[(k, recall, mrr)] per test file, parsed from the official result lines."""
    found = re.findall(r"Recall@(\d+): ([\d.]+) MRR@\d+: ([\d.]+)", stdout)
    return [(int(k), float(r), float(m)) for k, r, m in found]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The first 8k training events and two test files in TSV, CSV and Parquet."""
    out = tmp_path_factory.mktemp("rsc15")
    train = pd.read_csv(DATA / "train_full.tsv", sep="\t", dtype={"ItemId": str}).iloc[:8000]
    train.to_csv(out / "train.tsv", sep="\t", index=False)
    train.to_csv(out / "train.csv", index=False)
    train.assign(ItemId=train["ItemId"].astype("int64")).to_parquet(out / "train.parquet")
    for name in ("test", "train_valid"):
        shutil.copy(DATA / f"{name}.tsv", out / f"{name}.tsv")
    return out


def test_train_save_load_and_two_test_files(small, tmp_path):
    model = tmp_path / "model.safetensors"
    run = gru4rec("run", small / "train.tsv", "-ps", SMALL, "-s", model, "-t", small / "test.tsv",
                  small / "train_valid.tsv", "-m", 1, 5, 10, 20, "-e", "conservative", "-d", "cpu", "-lpm")
    out = run.stdout
    assert "SET   layers                  TO   [32]" in out
    assert re.search(r"^Epoch2 --> loss: [\d.]+ \([\d.]+s\) \[[\d.]+ mb/s \| \d+ e/s\]$", out, re.M)
    in_memory = metrics(out)
    assert [k for k, _, _ in in_memory] == [1, 5, 10, 20, 1, 5, 10, 20]
    assert out.count("PRIMARY METRIC: ") == 2
    assert float(re.search(r"PRIMARY METRIC: ([\d.]+)", out).group(1)) == pytest.approx(in_memory[0][1], abs=1e-6)
    assert 0 < model.stat().st_size < 5_000_000
    loaded = gru4rec("run", model, "-l", "-t", small / "test.tsv", small / "train_valid.tsv",
                     "-m", 1, 5, 10, 20, "-e", "conservative", "-d", "cpu")
    assert metrics(loaded.stdout) == in_memory


def test_tsv_csv_parquet_give_identical_metrics(small):
    results = [metrics(gru4rec("run", small / f"train.{ext}", "-ps", SMALL, "-t", small / "test.tsv",
                               "-d", "cpu").stdout) for ext in ("tsv", "csv", "parquet")]
    assert results[0] == results[1] == results[2]
    assert results[0][0][1] > 0.2


def test_official_file_forms_read_like_the_official_run_py(small, tmp_path):
    """A joblib .pickle (behind --allow-pickle) and TAB-separated files of any other name give the same run."""
    import joblib
    joblib.dump(pd.read_csv(small / "train.tsv", sep="\t", dtype={"ItemId": str}), tmp_path / "train.pickle")
    shutil.copy(small / "train.tsv", tmp_path / "events.dat")
    shutil.copy(small / "train.tsv", tmp_path / "events")
    one_line_error(gru4rec("run", tmp_path / "train.pickle", "-ps", SMALL, "-d", "cpu", ok=False),
                   "pass --allow-pickle if you trust it")
    expected = metrics(gru4rec("run", small / "train.tsv", "-ps", SMALL, "-t", small / "test.tsv", "-d", "cpu").stdout)
    for path, extra in ((tmp_path / "train.pickle", ["--allow-pickle"]), (tmp_path / "events.dat", []),
                        (tmp_path / "events", [])):
        run = gru4rec("run", path, "-ps", SMALL, "-t", small / "test.tsv", "-d", "cpu", *extra)
        assert metrics(run.stdout) == expected, path


@pytest.mark.parametrize("name", sorted(p.name for p in SPACES.glob("*_best.py")) or ["none"])
def test_published_paramfiles_train(name, small, tmp_path):
    if name == "none":
        pytest.skip("no published paramfiles in spaces/")
    params = read_param_file(SPACES / name)
    params.update(n_epochs=1, n_sample=256)  # a short run; every other published value kept
    pf = tmp_path / name
    pf.write_text("from collections import OrderedDict\ngru4rec_params = OrderedDict(" +
                  repr(list(params.items())) + ")\n")
    run = gru4rec("run", small / "train.tsv", "-pf", pf, "-t", small / "test.tsv", "-d", "cpu")
    assert "Epoch1 --> loss:" in run.stdout
    assert metrics(run.stdout)[0][1] > 0.05


def one_line_error(proc, needle):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0], lines[0]


def test_bad_input_gives_one_clear_line_and_no_output_file(small, tmp_path):
    model = tmp_path / "m.safetensors"
    bad_col = tmp_path / "bad.tsv"
    bad_col.write_text("SessionId\tItem\tTime\n1\t2\t3\n")
    one_line_error(gru4rec("run", bad_col, "-ps", SMALL, "-s", model, ok=False), "missing column 'ItemId'")
    one_line_error(gru4rec("run", small / "train.tsv", "-ps", "layerz=3", "-s", model, ok=False),
                   "unknown parameter 'layerz'")
    one_line_error(gru4rec("run", small / "train.tsv", "-ps", "loss=bpr", "-s", model, ok=False),
                   "loss='bpr': allowed values are cross-entropy, bpr-max")
    evil = tmp_path / "evil.py"
    evil.write_text("import os\ngru4rec_params = {}\n")
    one_line_error(gru4rec("run", small / "train.tsv", "-pf", evil, "-s", model, ok=False), "line 1: only")
    unknown = tmp_path / "unknown.tsv"
    unknown.write_text("SessionId\tItemId\tTime\n1\tnope1\t1\n1\tnope2\t2\n")
    one_line_error(gru4rec("run", small / "train.tsv", "-ps", SMALL, "-s", model, "-t", unknown, ok=False),
                   "none of the 2 events has an item of the training item map")
    one_line_error(gru4rec("run", small / "train.tsv", "-ps", SMALL, "-s", "/proc/forbidden/m", ok=False),
                   "-s /proc/forbidden/m")
    one_line_error(gru4rec("run", small / "train.tsv", "-ps", SMALL, "-pf", evil, ok=False), "exactly one of")
    one_line_error(gru4rec("run", small / "train.tsv", "-ps", SMALL, "-g", "gru4rec_theano", ok=False),
                   "unknown model variant")
    assert not model.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_truncated_or_foreign_model_file(small, tmp_path):
    model = tmp_path / "m.safetensors"
    gru4rec("run", small / "train.tsv", "-ps", "layers=8,n_epochs=1,n_sample=16", "-s", model, "-d", "cpu")
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(model.read_bytes()[:5000])
    one_line_error(gru4rec("run", truncated, "-l", "-t", small / "test.tsv", ok=False), "t.safetensors: corrupt")
    one_line_error(gru4rec("run", small / "test.tsv", "-l", "-t", small / "test.tsv", ok=False),
                   "test.tsv: corrupt, truncated or not a gru4rec-model file")
