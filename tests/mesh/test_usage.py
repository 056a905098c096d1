"""Per-model request rates, as the agent publishes them for copies by rate."""

from __future__ import annotations

from mesh._router import UsageStats


def test_request_rate_over_a_sliding_window() -> None:
    st = UsageStats(window_start=100.0)
    st.window_count = 1
    # one request in the first second of a 60 s window is 1 per minute, not 60
    assert st.rate_rpm(101.0, 60.0) == 1.0
    st.window_count = 30
    assert st.rate_rpm(130.0, 60.0) == 30.0
    # the next window: the previous one weighs by its overlap, then fades out
    assert st.rate_rpm(160.0, 60.0) == 30.0
    st.window_count = 0
    assert st.rate_rpm(190.0, 60.0) == 15.0
    assert st.rate_rpm(400.0, 60.0) == 0.0  # idle for more than two windows
