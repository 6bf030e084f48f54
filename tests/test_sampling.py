import numpy as np
import torch

from gru4rec.sampling import SampleStore


def store(counts, alpha, n_sample=100, size=1000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return SampleStore(np.asarray(counts), alpha, n_sample, gen, torch.device("cpu"), store_size=size)


def frequencies(s, steps):
    drawn = torch.cat([s.next() for _ in range(steps)]).numpy()
    return np.bincount(drawn, minlength=s.n_items) / len(drawn)


def test_frequencies_follow_support_to_the_alpha():
    counts = [1, 4, 9, 16, 0, 25]
    for alpha, weights in [(0.5, [1, 2, 3, 4, 0, 5]), (1.0, counts), (0.0, [1] * 6)]:
        expected = np.asarray(weights, float) / sum(weights)
        observed = frequencies(store(counts, alpha, n_sample=1000, size=200_000), 400)
        assert np.abs(observed - expected).max() < 0.004, (alpha, observed, expected)


def test_store_holds_size_over_n_sample_rows_and_refills():
    s = store([1, 2, 3], 1.0, n_sample=10, size=35)
    assert s.rows == 3
    first = [s.next().clone() for _ in range(3)]
    assert s.ptr == 3
    fourth = s.next()
    assert s.ptr == 1  # refilled
    assert not all(torch.equal(fourth, f) for f in first)


def test_state_restores_the_same_future_samples():
    a = store(np.arange(1, 50), 0.5, n_sample=8, size=40)
    for _ in range(7):
        a.next()
    state = a.state_dict()
    gen_state = a.generator.get_state()
    expected = [a.next().clone() for _ in range(12)]
    b = store(np.arange(1, 50), 0.5, n_sample=8, size=40, seed=123)
    b.generator.set_state(gen_state)
    b.load_state_dict(state)
    assert all(torch.equal(b.next(), e) for e in expected)


def test_threaded_fill_equals_one_searchsorted():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        s = store(np.arange(1, 5000), 0.5, n_sample=1000, size=2_000_000)
        state = s.generator.get_state()
        first = s.next()
        u = torch.rand(2_000_000, generator=torch.Generator().set_state(state))
        expected = torch.searchsorted(s.cdf, u, right=True).clamp_(max=s.n_items - 1).view(s.rows, 1000)
        assert torch.equal(s.store, expected) and torch.equal(first, expected[0])
    finally:
        torch.set_num_threads(threads)
