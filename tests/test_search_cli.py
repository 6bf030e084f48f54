"""Bad input to gru4rec-search: one clear line on stderr, exit status 2, no Ray started, nothing written."""
import json
import subprocess
import sys

import pytest
import ray

from gru4rec.datasets.synthetic import SyntheticSpec, write_splits
from search.cli import main


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return write_splits(tmp_path_factory.mktemp("data"), SyntheticSpec(n_events=3000, seed=1))


def run_args(splits, storage, *extra: str) -> list[str]:
    return ["run", "--train", str(splits["train_tr"]), "--valid", str(splits["train_valid"]),
            "--train-full", str(splits["train_full"]), "--test", str(splits["test"]), "--name", "bad",
            "--storage", str(storage), "--trials", "2", "--epochs", "1", "--local-cpus", "1", "--no-dashboard", *extra]


def fails_with(capsys, args: list[str], needle: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gru4rec-search: error: "), err
    assert needle in err, err
    assert "Traceback" not in err
    assert not ray.is_initialized()
    return err


def test_missing_split_file(splits, tmp_path, capsys):
    args = run_args(splits, tmp_path / "store")
    args[args.index("--valid") + 1] = str(tmp_path / "nope.tsv")
    fails_with(capsys, args, f"--valid {tmp_path / 'nope.tsv'}: no such file")
    assert not (tmp_path / "store").exists()


def test_split_file_that_is_not_event_data(splits, tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n1\t2\n")
    args = run_args(splits, tmp_path / "store")
    args[args.index("--test") + 1] = str(bad)
    fails_with(capsys, args, "missing column 'SessionId'")
    assert not (tmp_path / "store").exists()


def test_space_naming_an_unknown_parameter(splits, tmp_path, capsys):
    space = tmp_path / "space.jsonl"
    space.write_text(json.dumps({"name": "layers", "dtype": "int", "values": [32, 64]}) + "\n" +
                     json.dumps({"name": "hidden_size", "dtype": "int", "values": [32, 64]}) + "\n")
    fails_with(capsys, run_args(splits, tmp_path / "store", "--space", str(space)),
               f"{space}: line 2: unknown parameter 'hidden_size'")
    assert not (tmp_path / "store").exists()


def test_unknown_mode(splits, tmp_path, capsys):
    fails_with(capsys, run_args(splits, tmp_path / "store", "--modes", "foo"),
               "unknown embedding mode 'foo'; use some of none, separate, shared")


def test_storage_that_is_not_writable(splits, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    fails_with(capsys, run_args(splits, blocker / "store"), f"storage {blocker / 'store' / 'bad'}: not writable")


@pytest.mark.parametrize("extra,needle", [
    (["--losses", "xe,hinge"], "unknown loss 'hinge'"),
    (["--fixed", "n_epochs=4"], "--fixed: n_epochs is set by the study; use --epochs"),
    (["--fixed", "layers=abc"], "--fixed: layers='abc'"),
    (["--space", "xe=/no/such.jsonl"], "/no/such.jsonl: cannot read space file"),
    (["--space", "bpr-max=x.jsonl", "--losses", "xe"], "bpr-max is not one of the searched losses"),
    (["--grace-period", "5"], "--grace-period must be an integer in 1..1"),
    (["--optuna-storage", "nosuchdb://x"], "--optuna-storage nosuchdb://x: cannot be used"),
])
def test_other_bad_options(splits, tmp_path, capsys, extra, needle):
    fails_with(capsys, run_args(splits, tmp_path / "store", *extra), needle)


def test_malformed_option_value_is_one_line(splits, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(run_args(splits, tmp_path / "store", "--trials", "many"))
    assert info.value.code == 2
    assert capsys.readouterr().err == \
        "gru4rec-search run: error: argument --trials: invalid int value: 'many' (see --help)\n"


def test_existing_search_is_not_overwritten_and_unknown_search_is_reported(splits, tmp_path, capsys):
    (tmp_path / "store" / "bad").mkdir(parents=True)
    (tmp_path / "store" / "bad" / "search.json").write_text("{}")
    fails_with(capsys, run_args(splits, tmp_path / "store"), "already exists")
    for command in ("status", "export", "resume"):
        fails_with(capsys, [command, "other", "--storage", str(tmp_path / "store")], "no search 'other'")


@pytest.fixture
def ray_down():
    yield
    ray.shutdown()


def test_gpus_asked_on_a_machine_without_gpu_stop_before_any_trial(splits, tmp_path, capsys, ray_down):
    assert main(run_args(splits, tmp_path / "store", "--gpus-per-trial", "0.5", "--quiet")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "gru4rec-search: error: --gpus-per-trial 0.5: this Ray instance has no GPU; use --gpus-per-trial 0"
    assert not ray.is_initialized()
    assert not (tmp_path / "store" / "bad" / "search.json").exists()


def write_fresh_search(storage) -> None:
    """The settings of a search named fresh whose studies have not started."""
    from search.settings import SearchSettings, Store
    from search.spaces import default_space_file, parse_losses, parse_modes
    losses = parse_losses("xe")
    space = default_space_file(losses[0])
    settings = SearchSettings(name="fresh", train="t", valid="v", train_full="f", test="x", losses=losses,
                              modes=parse_modes("none,shared"), storage=str(storage),
                              spaces={losses[0]: {"source": str(space), "text": space.read_text()}})
    Store(str(storage / "fresh")).write("search.json", settings.to_json().encode())


def test_status_of_a_search_whose_studies_have_not_started(tmp_path, capsys):
    write_fresh_search(tmp_path)
    assert main(["status", "fresh", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines() if "not started" in line] == ["xe_none", "xe_shared"], out


def test_status_reads_the_search_folder_without_importing_torch(tmp_path):
    write_fresh_search(tmp_path)
    code = ("import sys; from search.cli import main; code = main(['status', 'fresh', '--storage', sys.argv[1]]); "
            "print('torch loaded' if 'torch' in sys.modules else 'no torch'); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "xe_shared" in proc.stdout and proc.stdout.splitlines()[-1] == "no torch", proc.stdout
