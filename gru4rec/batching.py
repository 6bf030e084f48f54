"""Session-parallel mini-batches, laid out once as fixed-width step arrays.

B slots each hold one session; at every step each active slot feeds its current item and predicts the
next one. A slot whose session runs out takes the next unused session (in session order) with its
hidden state reset; once no unused session remains, finished slots go idle, so the active batch
shrinks at the end. Since sessions are never shuffled the schedule is the same every epoch, so it is
computed once: idle slots keep their column and are marked with the padding item, which keeps every
step the same shape (no per-step host work, and a shape a CUDA graph can replay).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

FILL_PAIRS = 1 << 21  # pairs written per vectorised block when the schedule is filled in


def index_dtype(largest: int) -> np.dtype:
    """int32 when every index up to `largest` fits, else int64: half the memory for any real catalogue."""
    return np.dtype(np.int32) if largest < 2 ** 31 else np.dtype(np.int64)


@dataclass
class Schedule:
    """Per step t and slot s: input item, target item, and whether the slot starts a new session.

    Idle slots hold `pad` as input and target. `n_active[t]` is the number of active slots. Item arrays
    are int32 unless the padding index needs int64, so a slot costs 9 bytes.
    """

    inputs: np.ndarray
    targets: np.ndarray
    resets: np.ndarray
    n_active: np.ndarray
    pad: int

    @property
    def n_steps(self) -> int:
        return len(self.n_active)

    @property
    def n_pairs(self) -> int:
        return int(self.n_active.sum())


def build_schedule(items: np.ndarray, offsets: np.ndarray, batch_size: int, pad: int,
                   stop_below: int = 1) -> Schedule:
    """Lay out all (input, target) pairs of the sessions into steps of `batch_size` slots.

    The epoch ends when no slot is active, or at a session boundary once fewer than `stop_below` slots
    remain active (training without extra negatives stops below 2 slots, as the original does).
    """
    pairs = np.diff(offsets) - 1  # per session; a single-event session has none and is passed over
    starts, slots, n_steps = _assign_slots(pairs, batch_size, stop_below)
    dtype = index_dtype(max(pad, int(items.max(initial=0))))
    inputs = np.full((n_steps, batch_size), pad, dtype=dtype)
    targets = np.full((n_steps, batch_size), pad, dtype=dtype)
    resets = np.zeros((n_steps, batch_size), dtype=bool)
    # Sessions cut off by an early end keep only their steps before it.
    taken = np.flatnonzero((pairs[:len(starts)] > 0) & (starts < n_steps))
    lengths = np.minimum(pairs[taken], n_steps - starts[taken])
    resets[starts[taken], slots[taken]] = True
    n_active = np.cumsum(np.bincount(starts[taken], minlength=n_steps + 1)
                         - np.bincount(starts[taken] + lengths, minlength=n_steps + 1))[:-1]
    ends = np.cumsum(lengths)
    flat_inputs, flat_targets = inputs.reshape(-1), targets.reshape(-1)
    lo = 0
    while lo < len(taken):  # blocks of sessions, so that the per-pair index arrays stay small
        hi = max(int(np.searchsorted(ends, ends[lo] - lengths[lo] + FILL_PAIRS, side="right")), lo + 1)
        block, n = taken[lo:hi], lengths[lo:hi]
        before = np.cumsum(n) - n  # pairs of the block before each session's first
        pair = np.arange(int(n.sum()))
        # Pair k of a session sits at step start + k of its slot and reads events offset + k and offset + k + 1.
        cell = np.repeat(starts[block].astype(np.int64) * batch_size + slots[block] - before * batch_size, n)
        source = np.repeat(offsets[block].astype(np.int64) - before, n) + pair
        cell += pair * batch_size
        flat_inputs[cell] = items[source]
        flat_targets[cell] = items[source + 1]
        lo = hi
    return Schedule(inputs, targets, resets, n_active.astype(index_dtype(batch_size)), pad)


def _assign_slots(pairs: np.ndarray, batch_size: int, stop_below: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The start step and slot of every session given a slot, and the number of steps of the epoch.

    Event-driven over the sessions (not the steps): slots freed at the same step take the next sessions
    in slot order; a session without pairs frees its slot at once, which then takes a session after the
    others freed at that step. Sessions not returned never got a slot (the epoch ended before them).
    """
    n_sessions = len(pairs)
    length = pairs.tolist()
    free: defaultdict[int, list[int]] = defaultdict(list)  # step -> slots freed then, in the order they were
    n_first = min(batch_size, n_sessions)
    starts = np.zeros(n_sessions, dtype=index_dtype(int(pairs.sum()) + 1))
    slots = np.zeros(n_sessions, dtype=index_dtype(batch_size))
    slots[:n_first] = np.arange(n_first)
    for s in range(n_first):
        free[length[s]].append(s)
    order: list[int] = []  # slots in the order sessions n_first, n_first + 1, ... took them
    started: list[tuple[int, int]] = []  # (step, number of sessions started then), for the steps after 0
    busy, nxt, step, last_end = n_first, n_first, 0, 0
    while free:
        step = min(free) if nxt == n_sessions else step  # in the tail only ends remain: jump to the next
        freed = free.pop(step, None)
        if freed is None:
            step += 1
            continue
        last_end = step
        n_before = nxt
        while freed:
            freed.sort()
            n_new = min(len(freed), n_sessions - nxt)
            taking = freed[:n_new] if n_new < len(freed) else freed
            again: list[int] = []
            for slot, pairs_left in zip(taking, length[nxt:nxt + n_new]):
                if pairs_left:
                    free[step + pairs_left].append(slot)
                else:
                    again.append(slot)
            nxt += n_new
            order.extend(taking)
            busy -= len(freed) - n_new
            freed = again
        if nxt > n_before:
            started.append((step, nxt - n_before))
        if busy < stop_below:
            break
        step += 1
    if order:
        slots[n_first:nxt] = order
        steps, counts = zip(*started)
        starts[n_first:nxt] = np.repeat(steps, counts)
    return starts[:nxt], slots[:nxt], last_end
