import json

import pandas as pd
import pytest
import torch

from gru4rec.checkpoint import ModelFileError, load_model, save_model
from gru4rec.config import Config
from gru4rec.model import GRU4Rec


@pytest.mark.parametrize("params", [dict(), dict(constrained_embedding=False, embedding=32, layers=[100, 50]),
                                    dict(constrained_embedding=False, embedding=0)])
def test_roundtrip_keeps_tensors_config_and_item_map(params, tmp_path):
    model = GRU4Rec(Config(**{"layers": [100], **params}), 3000)
    ids = pd.Index([f"item{i}" for i in range(3000)])
    path = tmp_path / "m.safetensors"
    save_model(path, model, ids)
    assert path.stat().st_size < 5_000_000
    loaded, loaded_ids = load_model(path)
    assert loaded.config == model.config and list(loaded_ids) == list(ids)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    raw = path.read_bytes()
    assert b"pickle" not in raw and not raw.startswith(b"\x80")  # a safetensors header, no pickle stream
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert header["__metadata__"]["format"] == "gru4rec-model"


def test_integer_item_ids_survive(tmp_path):
    model = GRU4Rec(Config(layers=[8]), 3)
    save_model(tmp_path / "m", model, pd.Index([10, 20, 2**40]))
    assert list(load_model(tmp_path / "m")[1]) == [10, 20, 2**40]


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        load_model(tmp_path / "missing")
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelFileError, match="junk: corrupt, truncated or not a gru4rec-model file"):
        load_model(junk)
