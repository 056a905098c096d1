"""The memory behind the swap guard: which model each recent eviction made room for."""

from __future__ import annotations

import pytest

from placement import Action, EvictionMemory


def test_it_remembers_the_latest_time_per_pair_within_the_window() -> None:
    mem = EvictionMemory(window_s=60)
    mem.note("a", "b", 10.0)
    mem.note("a", "b", 40.0)
    mem.note("a", "c", 50.0)
    assert mem.recent == {"a": {"b": 40.0, "c": 50.0}}
    mem.note("x", "y", 105.0)  # 10.0 and 40.0 fall out of the window; the pair's latest (40) too
    assert mem.recent == {"a": {"c": 50.0}, "x": {"y": 105.0}}
    mem.expire(200.0)
    assert mem.recent == {} and len(mem) == 0


def test_an_older_entry_leaving_does_not_drop_a_newer_one_of_the_same_pair() -> None:
    mem = EvictionMemory(window_s=60)
    mem.note("a", "b", 10.0)
    mem.note("a", "b", 65.0)
    mem.expire(71.0)  # the note at 10 goes; the pair's latest time, 65, stays
    assert mem.recent == {"a": {"b": 65.0}}


def test_only_evictions_that_name_a_model_are_noted_and_the_size_is_bounded() -> None:
    mem = EvictionMemory(window_s=1e9, max_entries=3)
    mem.note_actions(
        [
            Action("unload", "a", "i1", "evict: room for b on i1", "b"),
            Action("unload", "c", "i1", "cold: idle"),  # a tick's unload: makes room for nothing
            Action("load", "b", "i1", "miss: requested"),
            Action("unload", "d", "i1", "evict: room for d", "d"),  # itself: not a swap
        ],
        5.0,
    )
    assert mem.recent == {"a": {"b": 5.0}}
    for k in range(5):
        mem.note(f"m{k}", "z", 6.0 + k)
    assert len(mem) == 3 and set(mem.recent) == {"m2", "m3", "m4"}
    with pytest.raises(ValueError):
        EvictionMemory(max_entries=0)
    with pytest.raises(TypeError):
        mem.recent["a"] = {}  # type: ignore[index]
