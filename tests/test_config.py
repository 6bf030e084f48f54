import json

import pytest

from gru4rec.config import Config, ConfigError, format_param_file, parse_param_string, read_param_file


def test_param_string_converts_types_and_resolves_layersize_after_layers():
    cfg = Config.from_dict(parse_param_string(
        "embedding=layersize,loss=bpr-max,layers=96/64,batch_size=32,constrained_embedding=0,"
        "learning_rate=0.1,elu_param=1,momentum=0.5"))
    assert cfg.layers == [96, 64]
    assert cfg.embedding == 96
    assert cfg.constrained_embedding is False
    assert cfg.batch_size == 32 and cfg.learning_rate == 0.1 and cfg.loss == "bpr-max"
    assert cfg.embedding_mode == "separate"


@pytest.mark.parametrize("text,mode", [
    ("embedding=0,constrained_embedding=False", "none"),
    ("embedding=layersize,constrained_embedding=False", "separate"),
    ("embedding=layersize,constrained_embedding=True", "shared"),
])
def test_embedding_modes(text, mode):
    assert Config.from_dict(parse_param_string(text)).embedding_mode == mode


def test_xe_is_an_alias_of_cross_entropy():
    assert Config.from_dict({"loss": "xe"}).loss == "cross-entropy"


@pytest.mark.parametrize("text,needle", [
    ("loss=bpr", "loss='bpr': allowed values are cross-entropy, bpr-max"),
    ("layers=abc", "layers='abc'"),
    ("batch_size=1.5", "batch_size='1.5': expected an integer"),
    ("constrained_embedding=maybe", "constrained_embedding='maybe'"),
    ("dropout_p_hidden=1.2", "dropout_p_hidden=1.2"),
    ("n_smaple=10", "unknown parameter 'n_smaple'"),
    ("momentum", "not of the form name=value"),
])
def test_bad_parameters_name_the_key(text, needle):
    with pytest.raises(ConfigError, match=None) as err:
        Config.from_dict(parse_param_string(text))
    assert needle in str(err.value)


OFFICIAL = """from collections import OrderedDict
gru4rec_params = OrderedDict([
('loss', 'cross-entropy'),
('constrained_embedding', True),
('embedding', 0),
('elu_param', 0),
('layers', [100]),
('n_epochs', 10),
('batch_size', 32),
('dropout_p_embed', 0.0),
('dropout_p_hidden', 0.4),
('learning_rate', 0.2),
('momentum', 0.2),
('n_sample', 2048),
('sample_alpha', 0.5),
('bpreg', 0.0),
('logq', 1.0)
])
"""


def test_official_param_file_is_read_without_executing(tmp_path):
    path = tmp_path / "rsc15_xe_shared_best.py"
    path.write_text(OFFICIAL)
    cfg = Config.from_dict(read_param_file(path))
    assert cfg.layers == [100] and cfg.batch_size == 32 and cfg.dropout_p_hidden == 0.4 and cfg.logq == 1.0


def test_param_file_with_code_is_rejected(tmp_path):
    path = tmp_path / "evil.py"
    marker = tmp_path / "ran"
    path.write_text(OFFICIAL + f"open({str(marker)!r}, 'w').write('x')\n")
    with pytest.raises(ConfigError, match=r"line 19: only"):
        read_param_file(path)
    call = tmp_path / "call.py"
    call.write_text(f"gru4rec_params = OrderedDict([('layers', __import__('os').getcwd())])\n")
    with pytest.raises(ConfigError, match="literals only"):
        read_param_file(call)
    assert not marker.exists()


def test_json_param_file_and_roundtrip_of_written_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"layers": [64, 32], "loss": "bpr-max", "embedding": "layersize",
                                "constrained_embedding": False}))
    cfg = Config.from_dict(read_param_file(path))
    assert cfg.layers == [64, 32] and cfg.embedding == 64
    out = tmp_path / "out.py"
    out.write_text(format_param_file(cfg))
    again = Config.from_dict(read_param_file(out))
    assert {k: v for k, v in again.to_dict().items() if k != "seed"} == \
        {k: v for k, v in cfg.to_dict().items() if k != "seed"}
