"""Space files, published spaces and best configs, and the fixed parameters of each study."""
import json
from pathlib import Path

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from gru4rec import Config, read_param_file
from search.spaces import (SPACES_DIR, SpaceError, default_params, default_space_file, load_space, parse_fixed,
                           parse_losses, parse_modes, parse_space, plan_study, study_name)


def lines(*entries: dict) -> str:
    return "\n".join(json.dumps(e) for e in entries) + "\n"


def test_every_dtype_with_step_and_log():
    space = parse_space(lines(
        {"name": "layers", "dtype": "int", "values": [64, 512], "step": 32},
        {"name": "batch_size", "dtype": "int", "values": [16, 256], "log": True},
        {"name": "learning_rate", "dtype": "float", "values": [0.01, 0.25], "step": 0.005},
        {"name": "momentum", "dtype": "float", "values": [0.0, 0.9]},
        {"name": "bpreg", "dtype": "float", "values": [0.001, 2], "log": True},
        {"name": "elu_param", "dtype": "categorical", "values": [0.5, 1, 0]},
        {"name": "n_sample", "dtype": "categorical", "values": [0, 512, 2048]},
    ) + "\n   \n")
    assert space["layers"] == IntDistribution(64, 512, step=32)
    assert space["batch_size"] == IntDistribution(16, 256, log=True)
    assert space["learning_rate"] == FloatDistribution(0.01, 0.25, step=0.005)
    assert space["momentum"] == FloatDistribution(0.0, 0.9)
    assert space["bpreg"] == FloatDistribution(0.001, 2.0, log=True)
    assert space["elu_param"] == CategoricalDistribution([0.5, 1, 0])
    assert space["n_sample"] == CategoricalDistribution([0, 512, 2048])


@pytest.mark.parametrize("text,needle", [
    ("{not json", "line 1: not valid JSON"),
    ('[1, 2]', "line 1: expected a JSON object"),
    ('{"name": "layer", "dtype": "int", "values": [1, 2]}', "unknown parameter 'layer'"),
    ('{"name": "layers", "dtype": "integer", "values": [1, 2]}', "dtype 'integer' is not one of int, float"),
    ('{"name": "layers", "dtype": "int"}', "missing key 'values'"),
    ('{"name": "layers", "dtype": "int", "values": [1, 2], "stepp": 1}', "unknown key 'stepp'"),
    ('{"name": "layers", "dtype": "int", "values": [64]}', "values must be [low, high]"),
    ('{"name": "layers", "dtype": "int", "values": [512, 64]}', "low 512 is greater than high 64"),
    ('{"name": "layers", "dtype": "int", "values": [64.5, 512]}', "needs integer bounds"),
    ('{"name": "layers", "dtype": "int", "values": [64, 512], "step": 0}', "step must be a number > 0"),
    ('{"name": "layers", "dtype": "int", "values": [64, 500], "step": 32}', "not a multiple of step 32"),
    ('{"name": "layers", "dtype": "int", "values": [64, 512], "step": 32, "log": true}', "log and step"),
    ('{"name": "layers", "dtype": "int", "values": [64, 512], "log": "yes"}', "log must be true or false"),
    ('{"name": "learning_rate", "dtype": "float", "values": [0, 0.2], "log": true}', "log needs low > 0"),
    ('{"name": "learning_rate", "dtype": "float", "values": [0.01, 0.2], "step": 0.03}', "not a multiple of step"),
    ('{"name": "dropout_p_hidden", "dtype": "float", "values": [0, 1.0]}', "value 1.0 is not allowed"),
    ('{"name": "elu_param", "dtype": "categorical", "values": []}', "non-empty list"),
    ('{"name": "elu_param", "dtype": "categorical", "values": [1, 1]}', "options must be distinct"),
    ('{"name": "elu_param", "dtype": "categorical", "values": [1, 2], "step": 1}', "int and float parameters only"),
    ('{"name": "loss", "dtype": "categorical", "values": ["xe"]}', "loss is set by the study (--losses)"),
    ('{"name": "n_epochs", "dtype": "int", "values": [1, 5]}', "n_epochs is set by the study (--epochs)"),
    ('{"name": "seed", "dtype": "int", "values": [1, 5]}', "seed cannot be searched"),
    ("", "the space has no parameters"),
])
def test_bad_space_files_give_clear_errors(text, needle):
    with pytest.raises(SpaceError) as info:
        parse_space(text, "my.jsonl")
    assert needle in str(info.value)
    assert str(info.value).startswith("my.jsonl")
    assert "\n" not in str(info.value)


def test_duplicate_parameter_names_the_second_line():
    entry = {"name": "layers", "dtype": "int", "values": [64, 128]}
    with pytest.raises(SpaceError, match=r"line 2: parameter 'layers' appears twice"):
        parse_space(lines(entry, entry))


def test_unreadable_space_file(tmp_path):
    with pytest.raises(SpaceError, match="cannot read space file"):
        load_space(tmp_path / "missing.jsonl")


def test_published_spaces_match_spec_10():
    xe, bpr = load_space(default_space_file("cross-entropy")), load_space(default_space_file("bpr-max"))
    assert xe == {k: v for k, v in bpr.items() if k not in ("bpreg", "elu_param")}
    assert xe["layers"] == IntDistribution(64, 512, step=32)
    assert xe["batch_size"] == IntDistribution(32, 256, step=16)
    assert xe["learning_rate"] == FloatDistribution(0.01, 0.25, step=0.005)
    assert xe["dropout_p_embed"] == FloatDistribution(0.0, 0.5, step=0.05)
    assert xe["dropout_p_hidden"] == FloatDistribution(0.0, 0.7, step=0.05)
    assert xe["momentum"] == FloatDistribution(0.0, 0.9, step=0.05)
    assert xe["sample_alpha"] == FloatDistribution(0.0, 1.0, step=0.1)
    assert bpr["bpreg"] == FloatDistribution(0.0, 2.0, step=0.05)
    assert bpr["elu_param"] == CategoricalDistribution([0.5, 1, 0])


@pytest.mark.parametrize("dataset,loss,expected", [
    ("rsc15", "xe", dict(layers=[100], batch_size=32, dropout_p_embed=0.0, dropout_p_hidden=0.4, learning_rate=0.2,
                         momentum=0.2, sample_alpha=0.5, logq=1.0)),
    ("yoochoose", "xe", dict(layers=[480], batch_size=48, dropout_p_hidden=0.2, learning_rate=0.07)),
    ("rees46", "xe", dict(layers=[512], batch_size=240, dropout_p_embed=0.45, learning_rate=0.065)),
    ("coveo", "bprmax", dict(layers=[512], batch_size=144, elu_param=1.0, bpreg=1.85, momentum=0.4, logq=0.0)),
    ("retailrocket", "bprmax", dict(layers=[224], batch_size=80, elu_param=0.5, bpreg=1.95, dropout_p_hidden=0.05)),
    ("diginetica", "bprmax", dict(layers=[512], batch_size=128, elu_param=1.0, bpreg=0.9, momentum=0.15)),
    # The best config of the other loss per dataset, from the same study (shared/spec/datasets.md).
    ("coveo", "xe", dict(layers=[512], batch_size=32, dropout_p_embed=0.4, dropout_p_hidden=0.15, learning_rate=0.03,
                         sample_alpha=0.0, logq=1.0)),
    ("diginetica", "xe", dict(layers=[192], batch_size=128, dropout_p_embed=0.45, learning_rate=0.1)),
    ("retailrocket", "xe", dict(layers=[192], batch_size=240, learning_rate=0.085, momentum=0.3, sample_alpha=0.3)),
    ("yoochoose", "bprmax", dict(layers=[448], batch_size=48, elu_param=0.0, bpreg=0.5, learning_rate=0.075)),
    ("rees46", "bprmax", dict(layers=[512], batch_size=32, elu_param=0.5, bpreg=0.75, momentum=0.55)),
])
def test_published_best_configs_are_official_paramfiles(dataset, loss, expected):
    path = SPACES_DIR / "best" / f"{dataset}_{loss}_shared_best.py"
    assert path.read_text().startswith("from collections import OrderedDict\ngru4rec_params = OrderedDict([")
    cfg = Config.from_dict(read_param_file(path))
    assert cfg.embedding_mode == "shared" and cfg.n_sample == 2048 and cfg.n_epochs == 10
    assert cfg.loss == ("cross-entropy" if loss == "xe" else "bpr-max")
    for key, value in expected.items():
        assert getattr(cfg, key) == value, key
    assert len(list((SPACES_DIR / "best").glob("*_best.py"))) == 11


@pytest.mark.parametrize("loss,mode,expected", [
    ("cross-entropy", "none", dict(embedding=0, constrained_embedding=False, logq=1.0)),
    ("cross-entropy", "separate", dict(embedding="layersize", constrained_embedding=False, logq=1.0)),
    ("cross-entropy", "shared", dict(embedding=0, constrained_embedding=True, logq=1.0)),
    ("bpr-max", "none", dict(embedding=0, constrained_embedding=False, logq=0.0)),
    ("bpr-max", "separate", dict(embedding="layersize", constrained_embedding=False, logq=0.0)),
    ("bpr-max", "shared", dict(embedding=0, constrained_embedding=True, logq=0.0)),
])
def test_fixed_parameters_per_loss_and_mode(loss, mode, expected):
    plan = plan_study(loss, mode, 10, load_space(default_space_file(loss)), {})
    assert plan.fixed == {"loss": loss, "n_epochs": 10, "n_sample": 2048, **expected}
    assert plan.name == study_name(loss, mode)
    cfg = Config.from_dict({**plan.fixed, "layers": 96})
    assert cfg.embedding_mode == mode
    if mode == "separate":
        assert cfg.embedding == 96  # 'layersize' follows the sampled layer size


def test_fixed_overrides_take_parameters_out_of_the_space_and_space_overrides_defaults():
    space = parse_space(lines({"name": "layers", "dtype": "int", "values": [32, 64], "step": 32},
                              {"name": "n_sample", "dtype": "categorical", "values": [0, 256]}))
    plan = plan_study("cross-entropy", "shared", 3, space, parse_fixed("layers=48,learning_rate=0.1"))
    assert list(plan.space) == ["n_sample"]
    assert "n_sample" not in plan.fixed
    assert plan.fixed["layers"] == "48" and plan.fixed["learning_rate"] == "0.1"
    with pytest.raises(SpaceError, match="leaves no parameter"):
        plan_study("cross-entropy", "shared", 3, space, parse_fixed("layers=48,n_sample=0"))


@pytest.mark.parametrize("text,needle", [
    ("n_smaple=10", "--fixed: unknown parameter 'n_smaple'"),
    ("dropout_p_hidden=2", "--fixed: dropout_p_hidden=2.0"),
    ("loss=bpr-max", "--fixed: loss is set by the study; use --losses"),
    ("constrained_embedding=0", "use --modes"),
    ("n_epochs=3", "use --epochs"),
])
def test_bad_fixed_values(text, needle):
    with pytest.raises(SpaceError) as info:
        parse_fixed(text)
    assert needle in str(info.value)


def test_losses_and_modes():
    assert parse_losses("xe,bpr-max,cross-entropy") == ["cross-entropy", "bpr-max"]
    assert parse_losses("bprmax") == ["bpr-max"]
    assert parse_modes("shared, none") == ["shared", "none"]
    with pytest.raises(SpaceError, match="unknown embedding mode 'foo'; use some of none, separate, shared"):
        parse_modes("shared,foo")
    with pytest.raises(SpaceError, match="unknown loss 'bpr'"):
        parse_losses("xe,bpr")
    with pytest.raises(SpaceError, match="--modes is empty"):
        parse_modes(",")


def test_default_params_follow_spec():
    assert default_params("cross-entropy", "shared", 10)["logq"] == 1.0
    assert default_params("bpr-max", "none", 5) == {"loss": "bpr-max", "embedding": 0, "constrained_embedding": False,
                                                    "n_epochs": 5, "n_sample": 2048, "logq": 0.0}
    assert Path(default_space_file("bpr-max")).name == "bpr-max.jsonl"
