"""Session-parallel mini-batches, laid out once as fixed-width step arrays.

B slots each hold one session; at every step each active slot feeds its current item and predicts the
next one. A slot whose session runs out takes the next unused session (in session order) with its
hidden state reset; once no unused session remains, finished slots go idle, so the active batch
shrinks at the end. Since sessions are never shuffled the schedule is the same every epoch, so it is
computed once: idle slots keep their column and are marked with the padding item, which keeps every
step the same shape (no per-step host work, and a shape a CUDA graph can replay).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Schedule:
    """Per step t and slot s: input item, target item, and whether the slot starts a new session.

    Idle slots hold `pad` as input and target. `n_active[t]` is the number of active slots.
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
    n_sessions = len(offsets) - 1
    n_slots = min(batch_size, n_sessions)
    session = np.arange(batch_size)
    active = session < n_sessions
    session[~active] = 0
    pos = offsets[session].copy()
    left = np.where(active, offsets[session + 1] - pos - 1, 0)  # pairs left in each slot's session
    fresh = active.copy()
    next_session = n_slots
    chunks: list[tuple[np.ndarray, np.ndarray]] = []
    while active.any():
        steps = int(left[active].min())
        if steps > 0:
            rows = pos[None, :] + np.arange(steps)[:, None]
            rows[:, ~active] = -1
            reset = np.zeros((steps, batch_size), dtype=bool)
            reset[0] = fresh & active
            chunks.append((rows, reset))
            pos = pos + steps
            left = left - steps
            fresh[:] = False
        done = np.flatnonzero(active & (left == 0))
        n_new = min(len(done), n_sessions - next_session)
        refill, idle = done[:n_new], done[n_new:]
        new_sessions = np.arange(next_session, next_session + n_new)
        next_session += n_new
        pos[refill] = offsets[new_sessions]
        left[refill] = offsets[new_sessions + 1] - pos[refill] - 1
        fresh[refill] = True
        active[idle] = False
        if active.sum() < stop_below:
            break
    if not chunks:
        empty = np.zeros((0, batch_size), dtype=np.int64)
        return Schedule(empty, empty.copy(), np.zeros((0, batch_size), dtype=bool), np.zeros(0, np.int64), pad)
    rows = np.concatenate([c[0] for c in chunks])
    resets = np.concatenate([c[1] for c in chunks])
    idle_mask = rows < 0
    inputs = np.where(idle_mask, pad, items[np.where(idle_mask, 0, rows)])
    targets = np.where(idle_mask, pad, items[np.where(idle_mask, 0, rows + 1)])
    return Schedule(inputs.astype(np.int64), targets.astype(np.int64), resets,
                    (~idle_mask).sum(axis=1).astype(np.int64), pad)
