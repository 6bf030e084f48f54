"""Bad input met at scale: each gives one line naming the value, exit status 2, and writes nothing."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

GRU4REC = shutil.which("gru4rec", path=str(Path(sys.executable).parent))
SMALL = "layers=8,n_epochs=1,n_sample=16,batch_size=8"


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    folder = tmp_path_factory.mktemp("events")
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 6, size=60)
    df = pd.DataFrame({"SessionId": np.repeat(np.arange(60), lengths), "ItemId": rng.integers(0, 40, lengths.sum()),
                       "Time": np.arange(lengths.sum(), dtype=float)})
    df.to_csv(folder / "train.tsv", sep="\t", index=False)
    return folder, df


def fails(tmp_path, *args, needle):
    model = tmp_path / "model.safetensors"
    before = set(tmp_path.iterdir())
    proc = subprocess.run([GRU4REC, *map(str, args), *(["-s", model] if args[0] == "run" else [])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in proc.stderr, proc.stderr
    assert set(tmp_path.iterdir()) == before and not model.exists()  # nothing written, no temporary left


@pytest.mark.parametrize("params,needle", [
    ("batch_size=inf", "batch_size='inf': expected an integer"),
    ("n_epochs=1e400", "n_epochs='1e400': expected an integer"),
    ("layers=8.9", "layers='8.9'"),
    ("learning_rate=inf", "learning_rate=inf: must be a finite number"),
    ("layers=8,layers=16", "parameter 'layers' is given twice"),
])
def test_bad_parameter_values(events, tmp_path, params, needle):
    fails(tmp_path, "run", events[0] / "train.tsv", "-ps", params, needle=needle)


def test_numeric_layers_in_a_paramfile_must_be_integers_and_keys_unique(events, tmp_path):
    pf = tmp_path.parent / f"{tmp_path.name}-a.py"
    pf.write_text("from collections import OrderedDict\ngru4rec_params = OrderedDict([('layers', [8.9])])\n")
    fails(tmp_path, "run", events[0] / "train.tsv", "-pf", pf, needle="layers=[8.9]: expected sizes")
    pf.write_text("from collections import OrderedDict\n"
                  "gru4rec_params = OrderedDict([('layers', [8]), ('n_epochs', 1), ('layers', [16])])\n")
    fails(tmp_path, "run", events[0] / "train.tsv", "-pf", pf, needle="line 2: parameter 'layers' is given twice")
    js = tmp_path.parent / f"{tmp_path.name}-b.json"
    js.write_text('{"layers": 8, "layers": 16}')
    fails(tmp_path, "run", events[0] / "train.tsv", "-pf", js, needle="parameter 'layers' is given twice")


@pytest.mark.parametrize("option,needle", [(["-m", "0"], "-m 0: a cut-off must be an integer >= 1"),
                                           (["-ss", "-5"], "-ss -5: the sample store needs a size >= 1"),
                                           (["--threads", "0"], "--threads 0: must be an integer >= 1")])
def test_bad_options(events, tmp_path, option, needle):
    fails(tmp_path, "run", events[0] / "train.tsv", "-ps", SMALL, *option, needle=needle)


def test_bad_times(events, tmp_path):
    folder, df = events
    bad = df.copy()
    bad.loc[7, "Time"] = np.inf
    path = tmp_path.parent / f"{tmp_path.name}-inf.tsv"
    bad.to_csv(path, sep="\t", index=False)
    fails(tmp_path, "run", path, "-ps", SMALL, needle="column 'Time' is empty, NaN or infinite at line 9")
    dated = df.assign(Time=pd.to_datetime(df["Time"], unit="s"))
    dated.loc[3, "Time"] = pd.NaT
    path = tmp_path.parent / f"{tmp_path.name}-nat.parquet"
    dated.to_parquet(path)
    fails(tmp_path, "run", path, "-ps", SMALL, needle="column 'Time' is empty (NaT) at line 5")


def test_sessions_of_one_event_and_a_giant_session(events, tmp_path):
    single = pd.DataFrame({"SessionId": np.arange(50), "ItemId": np.arange(50) % 7, "Time": np.arange(50.0)})
    path = tmp_path.parent / f"{tmp_path.name}-single.tsv"
    single.to_csv(path, sep="\t", index=False)
    fails(tmp_path, "run", path, "-ps", SMALL, needle="every session has a single event, so there is nothing to train")
    fails(tmp_path, "run", events[0] / "train.tsv", "-ps", SMALL, "-t", path,
          needle="every session has a single event, so there is nothing to predict")
    n = 3_000_000  # one session holding every event, with a batch of 256: a wrong -sk
    giant = pd.DataFrame({"SessionId": np.zeros(n, dtype=np.int64), "ItemId": np.arange(n) % 50,
                          "Time": np.arange(n, dtype=float)})
    path = tmp_path.parent / f"{tmp_path.name}-giant.parquet"
    giant.to_parquet(path)
    fails(tmp_path, "run", path, "-ps", "layers=8,n_epochs=1,batch_size=256",
          needle="the longest session has 3,000,000 events of 3,000,000")


def test_generate_with_no_events(tmp_path):
    fails(tmp_path, "generate", tmp_path / "out", "--events", "0", needle="--events 0: generate at least 100 events")
