"""The gate's per-source order buffer: frames out in index order, each once, a missing one given up after a bound."""
from __future__ import annotations

import pytest

from stream.reorder import Reorder


def feed(order: Reorder, arrivals, now: float = 0.0) -> list[tuple[int, bool]]:
    out = []
    for index in arrivals:
        out += [(msg, ok) for msg, ok in order.push(index, index, now)]
    return out


@pytest.mark.parametrize("arrivals, expected", [
    ([], []),
    ([0, 1, 2], [(0, True), (1, True), (2, True)]),
    ([1, 0, 3, 2], [(0, True), (1, True), (2, True), (3, True)]),     # two workers, interleaved
    ([2, 1, 1, 0, 2], [(0, True), (1, True), (2, True), (2, False)]),  # a replay of a held frame is dropped;
])                                                                     # one after its turn comes out late
def test_frames_come_out_in_order_each_once(arrivals, expected):
    assert feed(Reorder(8, 30.0), arrivals) == expected


def test_a_missing_frame_is_given_up_after_max_held_and_comes_out_late():
    order = Reorder(3, 30.0)
    assert feed(order, [0, 2, 3]) == [(0, True)]       # 1 is missing: 2 and 3 wait
    assert feed(order, [4]) == [(2, True), (3, True), (4, True)] and order.skipped == 1
    assert feed(order, [1]) == [(1, False)] and order.late == 1  # it came after all: out, marked late


def test_a_missing_frame_is_given_up_after_max_wait_even_without_new_frames():
    order = Reorder(64, 5.0)
    assert order.push(1, 1, now=100.0) == []
    assert order.release(now=104.0) == []
    assert order.release(now=105.5) == [(1, True)] and order.skipped == 1


def test_live_never_waits_and_flush_empties_the_buffer():
    live = Reorder(1, 30.0)
    assert feed(live, [0, 3, 2, 5]) == [(0, True), (3, True), (2, False), (5, True)]
    order = Reorder(64, 30.0)
    feed(order, [2, 5])
    assert order.release(now=0.0, flush=True) == [(2, True), (5, True)] and order.skipped == 4


def test_a_restarted_gate_starts_where_the_first_frames_are():
    order = Reorder(64, 30.0, start=None)
    assert feed(order, [7, 6], now=0.0) == []          # gathering: where does the stream stand?
    assert order.release(now=1.5) == [(6, True), (7, True)] and order.skipped == 0
