"""The progress line: counts, rate over the last interval, and time left, on a clock we drive."""
from factory.progress import ProgressLog, duration


def test_lines_come_once_per_interval_with_rate_and_time_left():
    now = [0.0]
    p = ProgressLog(at_most=1000, every_s=60, clock=lambda: now[0])
    now[0] = 30
    assert p.add(100) is None  # not due yet
    now[0] = 60
    line = p.add(20)
    assert line == "progress: 120 of at most 1,000 samples (12.0%), 2/s over the last 1 min, 1 min so far, at most about 7 min left"
    assert p.figures() == {"rate_per_s": 2.0, "interval_s": 60.0, "left_s_at_most": 440.0}  # what manifest.json and `factory status` show
    now[0] = 90
    assert p.add(500) is None
    now[0] = 7260  # two hours in, 880 left at 500/7200 s
    line = p.add(380)  # the first batch after a slow stretch: the rate is over the 2 hours it took
    assert line.startswith("progress: 1,000 of at most 1,000 samples (100.0%), 0.122/s over the last 2 h 00 min, 2 h 01 min so far")
    assert "left" not in line
    assert p.figures()["left_s_at_most"] is None


def test_off_and_durations():
    p = ProgressLog(at_most=10, every_s=0, clock=lambda: 1e9)
    assert p.add(5) is None
    assert p.figures() == {"rate_per_s": None, "interval_s": None, "left_s_at_most": None}
    assert [duration(s) for s in (4.6, 61, 3 * 3600 + 5 * 60, 2 * 86400 + 4 * 3600)] == ["5 s", "1 min", "3 h 05 min", "2 d 04 h"]
