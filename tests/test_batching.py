import numpy as np
import pytest

from gru4rec.batching import build_schedule

PAD = 99


def sessions(*lengths):
    """Session s holds items 10*s, 10*s+1, ...; returns (items, offsets)."""
    items = np.concatenate([10 * s + np.arange(n) for s, n in enumerate(lengths)])
    return items, np.concatenate(([0], np.cumsum(lengths)))


def test_slots_refill_in_session_order_and_tail_shrinks():
    items, offsets = sessions(3, 2, 4, 2, 3)
    s = build_schedule(items, offsets, batch_size=2, pad=PAD)
    # Worked by hand: slot 0 runs s0, s3, s4; slot 1 runs s1, s2, then goes idle.
    assert s.inputs.tolist() == [[0, 10], [1, 20], [30, 21], [40, 22], [41, PAD]]
    assert s.targets.tolist() == [[1, 11], [2, 21], [31, 22], [41, 23], [42, PAD]]
    assert s.resets.tolist() == [[True, True], [False, True], [True, False], [True, False], [False, False]]
    assert s.n_active.tolist() == [2, 2, 2, 2, 1]
    assert s.n_pairs == sum(n - 1 for n in (3, 2, 4, 2, 3))


def test_without_extra_negatives_the_epoch_ends_below_two_slots():
    items, offsets = sessions(3, 2, 4, 2, 3)
    s = build_schedule(items, offsets, batch_size=2, pad=PAD, stop_below=2)
    assert s.n_steps == 4
    assert s.n_active.tolist() == [2, 2, 2, 2]


def test_single_event_sessions_are_skipped_and_more_slots_than_sessions():
    items, offsets = sessions(2, 1, 3)
    s = build_schedule(items, offsets, batch_size=1, pad=PAD)
    assert s.inputs[:, 0].tolist() == [0, 20, 21]
    assert s.targets[:, 0].tolist() == [1, 21, 22]
    assert s.resets[:, 0].tolist() == [True, True, False]
    wide = build_schedule(items, offsets, batch_size=4, pad=PAD)
    assert wide.inputs.tolist() == [[0, PAD, 20, PAD], [PAD, PAD, 21, PAD]]
    assert wide.n_active.tolist() == [2, 1]


def test_every_pair_appears_exactly_once_in_order_within_its_session():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 9, size=200)
    items, offsets = sessions(*lengths)
    s = build_schedule(items, offsets, batch_size=7, pad=100_000)
    active = s.inputs != 100_000
    pairs = sorted(zip(s.inputs[active].tolist(), s.targets[active].tolist()))
    expected = sorted((int(items[i]), int(items[i + 1])) for a, b in zip(offsets[:-1], offsets[1:])
                      for i in range(a, b - 1))
    assert pairs == expected
    # Within a slot, a pair that is not a reset continues the previous step's target.
    for t in range(1, s.n_steps):
        cont = active[t] & ~s.resets[t]
        assert (s.inputs[t][cont] == s.targets[t - 1][cont]).all()


def reference_schedule(lengths, batch_size, stop_below):
    """Step by step, slot by slot, as the original iterator runs: (input, target, reset) rows per step."""
    n = len(lengths)
    session = list(range(min(batch_size, n))) + [None] * max(0, batch_size - n)
    pos = [0] * batch_size
    fresh = [s is not None for s in session]
    next_session = min(batch_size, n)
    rows = []
    while True:
        # Refill every slot whose session has no pair left, in slot order, as often as needed.
        while True:
            done = [b for b in range(batch_size) if session[b] is not None and pos[b] >= lengths[session[b]] - 1]
            if not done:
                break
            for b in done:
                if next_session < n:
                    session[b], pos[b], fresh[b] = next_session, 0, True
                    next_session += 1
                else:
                    session[b] = None
            if sum(s is not None for s in session) < stop_below:
                return rows
        if all(s is None for s in session):
            return rows
        rows.append([(session[b], pos[b], fresh[b]) if session[b] is not None else None for b in range(batch_size)])
        for b in range(batch_size):
            if session[b] is not None:
                pos[b] += 1
                fresh[b] = False


@pytest.mark.parametrize("seed", range(6))
def test_matches_a_step_by_step_reference(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        lengths = rng.integers(1 if seed % 2 else 2, 9, size=int(rng.integers(1, 40)))
        batch_size, stop_below = int(rng.integers(1, 9)), int(rng.integers(1, 4))
        items, offsets = sessions(*lengths)
        s = build_schedule(items, offsets, batch_size=batch_size, pad=PAD, stop_below=stop_below)
        rows = reference_schedule(lengths.tolist(), batch_size, stop_below)
        assert s.n_steps == len(rows)
        for t, row in enumerate(rows):
            expected_in = [PAD if c is None else 10 * c[0] + c[1] for c in row]
            assert s.inputs[t].tolist() == expected_in
            assert s.targets[t].tolist() == [PAD if c is None else 10 * c[0] + c[1] + 1 for c in row]
            assert s.resets[t].tolist() == [c is not None and c[2] for c in row]
            assert s.n_active[t] == sum(c is not None for c in row)


def test_int32_unless_the_padding_index_needs_int64():
    items, offsets = sessions(3, 2, 4, 2, 3)
    small = build_schedule(items, offsets, batch_size=2, pad=PAD)
    wide = build_schedule(items, offsets, batch_size=2, pad=2**31)
    assert small.inputs.dtype == np.int32 and small.inputs.itemsize + small.targets.itemsize + 1 == 9
    assert wide.inputs.dtype == np.int64 and wide.targets.dtype == np.int64
    for name in ("inputs", "targets"):
        a, b = getattr(small, name), getattr(wide, name)
        assert np.array_equal(np.where(a == PAD, -1, a), np.where(b == 2**31, -1, b))
    assert np.array_equal(small.resets, wide.resets) and np.array_equal(small.n_active, wide.n_active)
