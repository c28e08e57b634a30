"""The weight governor on a fake clock: the cap holds in every rolling minute, pacing is even."""

from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.governor import WINDOW_S, WINDOW_SLACK_S, Governor


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0
        self.server_ms = 1_700_000_000_000  # a minute boundary: 1_700_000_000_000 % 60_000 == 20_000

    def monotonic(self) -> float:
        return self.now

    def server(self) -> int:
        return self.server_ms

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.server_ms += int(seconds * 1000)


def governor(clock: Clock, limit: int = 2400, share: float = 0.5) -> Governor:
    return Governor(limit, share, clock.server, clock.monotonic)


def max_window(sent: list[tuple[float, int]], window: float = WINDOW_S + WINDOW_SLACK_S) -> int:
    """The most weight sent in any half-open window (t - window, t]; by default 61 s: the cap holds
    over a minute plus the slack, so at Binance for any request that lands up to 1 s late."""
    best = 0
    for i, (t, _) in enumerate(sent):
        best = max(best, sum(w for s, w in sent[: i + 1] if s > t - window))
    return best


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0, max_value=20), st.sampled_from([1, 5, 10, 20, 40]),
                          st.booleans()), min_size=1, max_size=250),
       st.booleans())
def test_no_rolling_minute_ever_exceeds_the_cap(steps: list[tuple[float, int, bool]], over_budget: bool) -> None:
    clock = Clock()
    gov = governor(clock, limit=300, share=0.5)  # cap 150
    gov.plan(round_weight=400 if over_budget else 50, interval_s=15, largest_call=5)
    sent: list[tuple[float, int]] = []
    for gap, weight, pace in steps:
        clock.advance(gap)
        if gov.try_acquire(weight, pace=pace):
            sent.append((clock.now, weight))
    assert max_window(sent) <= 150
    assert gov.used_last_minute() == sum(w for t, w in sent if t > clock.now - WINDOW_S)
    # ...and a request that reaches Binance up to 1 s after its admission still keeps every minute under it.
    delayed = sorted((t + (0.999 if i % 2 else 0.0), w) for i, (t, w) in enumerate(sent))
    assert max_window(delayed, WINDOW_S) <= 150


def test_under_budget_a_whole_round_goes_at_once() -> None:
    clock = Clock()
    gov = governor(clock)
    gov.plan(round_weight=100, interval_s=15, largest_call=5)  # 400/min against a cap of 1200
    assert all(gov.try_acquire(5) for _ in range(20))
    clock.advance(15)
    assert all(gov.try_acquire(5) for _ in range(20))


def test_over_budget_refreshes_flow_at_the_caps_steady_rate() -> None:
    """300 accounts x 5 at a 15 s interval is 6000/min against 1200: pace to 20 weight a second."""
    clock = Clock()
    gov = governor(clock)
    gov.plan(round_weight=1500, interval_s=15, largest_call=5)
    starts: list[float] = []
    while clock.now < 10_000 + 300:
        while gov.try_acquire(5):
            starts.append(clock.now)
        clock.advance(0.05)
    per_minute = Counter(int((t - 10_000) // 60) for t in starts)
    assert all(1170 <= per_minute[m] * 5 <= 1200 for m in range(5)), per_minute  # 1200 x 60 / 61 = 1180
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # An even flow, 4 refreshes a second; where the cap itself binds (a request exactly 60 s
    # old still in the window) the next one waits one more slot, never longer.
    assert max(gaps) <= 0.6 and sum(g > 0.3 for g in gaps) < len(gaps) / 20
    assert max_window([(t, 5) for t in starts]) <= 1200
    assert max_window([(t + (0.9 if i % 3 else 0), 5) for i, t in enumerate(starts)], WINDOW_S) <= 1200


def test_a_stall_lets_no_burst_build_up() -> None:
    clock = Clock()
    gov = governor(clock)
    gov.plan(round_weight=100, interval_s=15, largest_call=5)
    for _ in range(30):
        clock.advance(1)
        gov.stall()  # e.g. waiting out a back-off with accounts queued
    assert gov.try_acquire(5)
    assert gov.wait_time(5) > 0  # only the steady rate from here: 5 / (1200 / 61) per second = 0.254 s
    clock.advance(0.26)
    assert gov.try_acquire(5)


def test_the_ips_total_stops_us_until_the_next_binance_minute() -> None:
    clock = Clock()
    gov = governor(clock, limit=2400)
    gov.plan(round_weight=100, interval_s=15, largest_call=5)
    assert gov.try_acquire(5)
    gov.note_reported(2158)  # the bots are busy: 2158 + 5 > 90 % of 2400
    assert not gov.try_acquire(5)
    wait = gov.wait_time(5)
    assert 39.9 < wait <= 40.1  # the server clock is 20 s into its minute
    clock.advance(wait)
    assert gov.try_acquire(5)
    assert gov.reported_this_minute() is None  # Binance's figure was about the minute that ended


def test_reported_weight_keeps_the_minutes_highest() -> None:
    clock = Clock()
    gov = governor(clock)
    gov.note_reported(300)
    gov.note_reported(120)  # an answer that left earlier, arriving late
    assert gov.reported_this_minute() == 300
    clock.advance(41)
    gov.note_reported(7)
    assert gov.reported_this_minute() == 7


def test_a_figure_from_a_request_that_crossed_the_minute_is_not_this_minutes() -> None:
    clock = Clock()  # 20 s into a Binance minute
    gov = governor(clock, limit=2400)
    gov.plan(round_weight=100, interval_s=15, largest_call=5)
    clock.advance(39.8)
    sent_at = clock.now
    clock.advance(0.3)  # the answer comes back 0.1 s into the next minute
    gov.note_reported(2158, sent_at)  # counted in the minute that ended, or in this one: unknown
    assert gov.reported_this_minute() is None
    assert gov.try_acquire(5)  # not blocked for the rest of this minute by the last one's total
    clock.advance(0.5)
    sent_at = clock.now  # 0.6 s into the minute: this figure is this minute's
    clock.advance(0.3)
    gov.note_reported(20, sent_at)
    assert gov.reported_this_minute() == 20


def test_a_refund_gives_back_to_its_own_admission() -> None:
    clock = Clock()
    gov = governor(clock, limit=60, share=0.5)  # cap 30
    gov.plan(round_weight=30, interval_s=60, largest_call=10)
    two_calls = gov.try_acquire(20)  # a refresh of two calls of 10
    clock.advance(2)
    sent = gov.try_acquire(10)  # another account's request, sent
    assert two_calls is not None and sent is not None
    gov.refund(two_calls, 10)  # the second call of the first refresh was not sent
    assert gov.used_last_minute() == 20 and two_calls.weight == 10 and sent.weight == 10
    clock.advance(WINDOW_S - 0.5)  # the first admission (61.5 s old) has expired, the second (59.5 s) not
    assert gov.used_last_minute() == 10
    assert not gov.try_acquire(25, pace=False)  # 10 still counted: the refund did not take the wrong entry
    assert gov.try_acquire(20, pace=False)


def test_a_refund_after_expiry_changes_nothing() -> None:
    clock = Clock()
    gov = governor(clock, limit=60, share=0.5)
    gov.plan(round_weight=30, interval_s=60, largest_call=10)
    old = gov.try_acquire(10)
    assert old is not None
    clock.advance(WINDOW_S + WINDOW_SLACK_S + 1)
    assert gov.try_acquire(30, pace=False)
    gov.refund(old, 10)  # long gone from the window: the 30 just taken still counts in full
    assert not gov.try_acquire(1, pace=False)


def test_a_follow_up_skips_pacing_but_not_the_cap() -> None:
    clock = Clock()
    gov = governor(clock, limit=20, share=0.5)  # cap 10
    gov.plan(round_weight=100, interval_s=15, largest_call=5)
    assert gov.try_acquire(5) and gov.try_acquire(5, pace=False)
    assert not gov.try_acquire(1, pace=False)
