"""The optimiser against the update formulas, computed in float64 NumPy."""
import numpy as np
import pytest
import torch

from gru4rec.optim import EPS, IndexedAdagradM


def reference_step(p, acc, mom, g, lr, momentum):
    acc = acc + g * g
    d = np.sqrt(acc + EPS)
    if momentum > 0:
        mom = momentum * mom - lr * g / d
        return p + mom, acc, mom
    return p - lr * g / d, acc, mom


@pytest.mark.parametrize("momentum", [0.0, 0.3])
def test_dense_update_matches_formula(momentum):
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(4, 3))
    param = torch.tensor(p0, dtype=torch.float64)
    opt = IndexedAdagradM([param], [], lr=0.1, momentum=momentum)
    p, acc, mom = p0, np.zeros_like(p0), np.zeros_like(p0)
    for _ in range(3):
        g = rng.normal(size=p0.shape)
        opt.step_dense([torch.tensor(g)])
        p, acc, mom = reference_step(p, acc, mom, g, 0.1, momentum)
    np.testing.assert_allclose(param.numpy(), p, rtol=1e-12)


@pytest.mark.parametrize("merge_by_unique", [True, False])  # the CPU path and the accelerator path
@pytest.mark.parametrize("momentum", [0.0, 0.4])
def test_row_update_sums_duplicates_and_leaves_other_rows_untouched(momentum, merge_by_unique):
    rng = np.random.default_rng(1)
    p0 = rng.normal(size=(6, 3))
    table = torch.tensor(p0, dtype=torch.float64)
    opt = IndexedAdagradM([], [table], lr=0.05, momentum=momentum, merge_by_unique=merge_by_unique)
    p, acc, mom = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for rows in ([1, 3, 1], [3, 4], [1, 1, 1, 5]):
        g = rng.normal(size=(len(rows), 3))
        opt.step_rows(table, torch.tensor(rows), torch.tensor(g))
        summed = np.zeros_like(p0)
        np.add.at(summed, rows, g)
        touched = sorted(set(rows))
        new_p, new_acc, new_mom = reference_step(p, acc, mom, summed, 0.05, momentum)
        # Lazy: only touched rows change, including their accumulator and momentum.
        p[touched], acc[touched], mom[touched] = new_p[touched], new_acc[touched], new_mom[touched]
        np.testing.assert_allclose(table.numpy(), p, rtol=1e-12)
        np.testing.assert_allclose(opt.acc[id(table)].numpy(), acc, rtol=1e-12)
        if momentum:
            np.testing.assert_allclose(opt.mom[id(table)].numpy(), mom, rtol=1e-12)
    assert np.array_equal(table.numpy()[[0, 2]], p0[[0, 2]])
    if not merge_by_unique:
        assert (opt.scratch[id(table)] == 0).all()  # the merge table is left clean for the next step


def test_vector_table_rows():
    bias = torch.zeros(5, dtype=torch.float64)
    opt = IndexedAdagradM([], [bias], lr=0.5, momentum=0.0)
    opt.step_rows(bias, torch.tensor([2, 2, 0]), torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64))
    expected = np.zeros(5)
    expected[2] = -0.5 * 3.0 / np.sqrt(9.0 + EPS)
    expected[0] = 0.5 * 1.0 / np.sqrt(1.0 + EPS)
    np.testing.assert_allclose(bias.numpy(), expected, rtol=1e-12)
