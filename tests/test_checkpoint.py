import json

import pandas as pd
import pytest
import torch

from gru4rec.checkpoint import ModelFileError, load_model, save_model, save_training_state, training_state_bytes
from gru4rec.config import Config
from gru4rec.data import SessionData
from gru4rec.model import GRU4Rec
from gru4rec.train import Trainer


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


@pytest.mark.parametrize("params", [dict(layers=[24], momentum=0.3), dict(layers=[16, 8], constrained_embedding=False,
                                                                        embedding=12),
                                    dict(layers=[20, 10], constrained_embedding=False, embedding=0, momentum=0.5)])
def test_the_size_of_a_training_state_is_known_in_advance(params, tmp_path):
    data = SessionData.from_frame(pd.DataFrame({"SessionId": [1, 1, 1, 2, 2] * 40, "ItemId": list(range(200)),
                                                "Time": list(range(200))}))
    trainer = Trainer(Config(n_sample=8, batch_size=4, **params), data, device="cpu")
    trainer.fit(1)
    save_training_state(tmp_path / "s.safetensors", trainer.state_dict())
    size = (tmp_path / "s.safetensors").stat().st_size
    expected = training_state_bytes(trainer.config, data.n_items)
    assert size <= expected <= size + (16 << 10)
