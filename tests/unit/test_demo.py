from streams.domain.config import TimeGuard
from streams.tools.demo import shop_time


def test_the_demo_shop_clock_stays_within_the_future_guard_for_twelve_hours() -> None:
    started, hour = 1_800_000_000_000, 3_600_000
    guard = int(TimeGuard().max_future_minutes * 60_000)
    for elapsed in range(0, 12 * hour + 1, hour // 4):
        assert shop_time(started, started + elapsed) - (started + elapsed) <= guard
    assert shop_time(started, started + 13 * hour) - (started + 13 * hour) > guard  # the bound is real
    assert shop_time(started, started + 60_000) - shop_time(started, started) == 3_600_000  # 60x
