import math

import pytest
import torch

from gru4rec.config import Config
from gru4rec.model import GRU4Rec

N = 300


def blocks(matrix, n_blocks, dim):
    return matrix.chunk(n_blocks, dim=dim)


def assert_uniform_within(block, rows, cols):
    bound = math.sqrt(6.0 / (rows + cols))
    assert block.abs().max() <= bound
    assert block.abs().max() > 0.9 * bound  # filled up to the bound, not a smaller range
    assert abs(block.mean().item()) < 4 * bound / math.sqrt(3 * block.numel())  # centred: 4 standard errors


@pytest.mark.parametrize("params", [
    dict(layers=[40], constrained_embedding=True, embedding=0),
    dict(layers=[40, 24], constrained_embedding=True, embedding=0),
    dict(layers=[40, 24], constrained_embedding=False, embedding=17),
    dict(layers=[40, 24, 8], constrained_embedding=False, embedding=0),
])
def test_init_bounds_per_gate_for_every_shape(params):
    model = GRU4Rec(Config(**params), N)
    layers = params["layers"]
    assert_uniform_within(model.Wy[:N], N, layers[-1])
    for table in model.item_tables():
        assert (table[N] == 0).all()  # padding row
    assert (model.By == 0).all()
    if model.mode == "separate":
        assert_uniform_within(model.E[:N], N, params["embedding"])
    if model.mode == "none":
        h0 = layers[0]
        for block in blocks(model.Wx0[:N], 3, 1):
            assert_uniform_within(block, N, h0)
        for block in blocks(model.Urz0, 2, 1) + (model.Un0,):
            assert_uniform_within(block, h0, h0)
        assert (model.b0 == 0).all()
    for cell in model.cells:
        for block in blocks(cell.weight_ih, 3, 0):
            assert_uniform_within(block, cell.hidden_size, cell.input_size)
        for block in blocks(cell.weight_hh, 3, 0):
            assert_uniform_within(block, cell.hidden_size, cell.hidden_size)
        assert (cell.bias_ih == 0).all() and (cell.bias_hh == 0).all()


def test_same_seed_same_init_other_seed_differs():
    a, b = GRU4Rec(Config(seed=3), N), GRU4Rec(Config(seed=3), N)
    c = GRU4Rec(Config(seed=4), N)
    assert torch.equal(a.Wy, b.Wy) and not torch.equal(a.Wy, c.Wy)


def test_mode_none_first_layer_is_the_original_gru():
    model = GRU4Rec(Config(layers=[5], constrained_embedding=False, embedding=0), 20)
    with torch.no_grad():
        model.b0.normal_()
    items = torch.tensor([3, 7])
    h = torch.randn(2, 5)
    out = model.step(model.Wx0[items], [h.clone()])
    xn, xr, xz = (model.Wx0[items] + model.b0).chunk(3, 1)
    r = torch.sigmoid(xr + h @ model.Urz0[:, :5])
    z = torch.sigmoid(xz + h @ model.Urz0[:, 5:])
    n = torch.tanh(xn + (r * h) @ model.Un0)
    torch.testing.assert_close(out, (1 - z) * h + z * n)


def test_dropout_output_is_what_the_layer_carries():
    model = GRU4Rec(Config(layers=[30], dropout_p_hidden=0.5), 20)
    hidden = [torch.zeros(4, 30)]
    out = model.step(model.Wy[torch.tensor([1, 2, 3, 4])], hidden, torch.Generator().manual_seed(0))
    assert hidden[0] is out
    zeros = (out == 0).float().mean().item()
    assert 0.3 < zeros < 0.7


@pytest.mark.parametrize("params", [
    dict(layers=[7], constrained_embedding=True),
    dict(layers=[6, 5], constrained_embedding=False, embedding=4, dropout_p_embed=0.3, dropout_p_hidden=0.2),
    dict(layers=[6, 5, 4], constrained_embedding=False, embedding=0, dropout_p_embed=0.25, dropout_p_hidden=0.3),
    dict(layers=[6], constrained_embedding=False, embedding=0),
])
def test_hand_derived_backward_equals_autograd(params):
    """train_forward/train_backward against autograd through `step`, same dropout draws, float64."""
    model = GRU4Rec(Config(**params), 20).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=p.dtype) * 0.3)
    x = model.input_table[torch.tensor([1, 4, 4, 9, 17])].detach().clone()
    hidden = [torch.randn(5, size, dtype=torch.float64) for size in params["layers"]]
    ours_hidden = [h.clone() for h in hidden]
    out, cache = model.train_forward(x, ours_hidden, torch.Generator().manual_seed(3))
    upstream = torch.randn_like(out)
    grads, dx = model.train_backward(cache, upstream)
    x_leaf, ref_hidden = x.clone().requires_grad_(), [h.clone() for h in hidden]
    ref = model.step(x_leaf, ref_hidden, torch.Generator().manual_seed(3))
    expected = torch.autograd.grad((ref * upstream).sum(), model.dense_parameters() + [x_leaf])
    torch.testing.assert_close(out, ref.detach())
    assert len(grads) == len(expected) - 1
    for got, want in zip(grads + [dx], expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for got, want in zip(ours_hidden, ref_hidden):
        torch.testing.assert_close(got, want.detach())


@pytest.mark.parametrize("mode", [dict(embedding=0, constrained_embedding=True),
                                  dict(embedding=0, constrained_embedding=False),
                                  dict(embedding=12, constrained_embedding=False)])
def test_tables_initialised_in_row_chunks_equal_one_float64_draw(monkeypatch, mode):
    """Item tables are filled a few rows at a time in float32; the values must be those of drawing each
    whole block in float64 and rounding it (the draws of every earlier release)."""
    import gru4rec.model as model_module
    monkeypatch.setattr(model_module, "INIT_CHUNK", 7 * 40 + 3)  # chunks end mid-table, off row boundaries
    config = Config.from_dict(dict(layers=[40, 24], **mode))
    model = GRU4Rec(config, N)
    generator = torch.Generator().manual_seed(config.seed)

    def whole(rows, cols, n_blocks):
        bound = math.sqrt(6.0 / (rows + cols))
        return torch.cat([(torch.rand(rows, cols, generator=generator, dtype=torch.float64) * 2 - 1) * bound
                          for _ in range(n_blocks)], dim=1).float()

    assert torch.equal(model.Wy[:N], whole(N, 24, 1)) and not model.Wy[N].any()
    if model.mode == "separate":
        assert torch.equal(model.E[:N], whole(N, 12, 1))
    if model.mode == "none":
        assert torch.equal(model.Wx0[:N], whole(N, 40, 3))
        assert torch.equal(model.Urz0, whole(40, 40, 2)) and torch.equal(model.Un0, whole(40, 40, 1))
