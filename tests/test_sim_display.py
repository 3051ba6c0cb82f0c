"""The live display's rendering, without a terminal: rows per transport, the progress bar, the
ETA, the plain log lines and the in-place redraw."""

from __future__ import annotations

import io

from simulator.display import (
    Display,
    Progress,
    Rates,
    TransportCounts,
    eta_text,
    progress_bar,
    render_plain,
    render_rows,
)


def test_progress_bar_and_eta() -> None:
    assert progress_bar(0, 1000, width=10) == "[..........]   0% 0/1,000"
    assert progress_bar(300, 1000, width=10) == "[###.......]  30% 300/1,000"
    assert progress_bar(1000, 1000, width=10) == "[##########] 100% 1,000/1,000"
    assert progress_bar(1200, 1000, width=10) == "[##########] 100% 1,200/1,000"
    assert progress_bar(0, 0, width=4) == "[####] 100% 0/0"
    assert eta_text(0, 100, 5.0) == "ETA -"
    assert eta_text(25, 100, 10.0) == "ETA 0:30"  # 75 left at 2.5/s
    assert eta_text(1, 1000, 10.0) == "ETA 2:46:30"
    assert eta_text(100, 100, 10.0) == "ETA 0:00"


def test_rows_per_transport_with_a_total() -> None:
    counts = {
        "mqtt": TransportCounts(sent=12_000, acked=11_990, errors=0),
        "http": TransportCounts(sent=500, acked=490, errors=10),
    }
    rates = {"mqtt": Rates(10_000.0, 9_990.0, 0.0), "http": Rates(50.0, 49.0, 1.0)}
    assert render_rows(counts, rates) == [
        "  http         50/s sent       49/s acked      1/s errors   total 500 sent, 490 acked, "
        "10 errors",
        "  mqtt      10.0k/s sent    9,990/s acked      0/s errors   total 12,000 sent, 11,990 "
        "acked, 0 errors",
        "  all       10.1k/s sent    10.0k/s acked      1/s errors   total 12,500 sent, 12,480 "
        "acked, 10 errors",
    ]
    one = render_rows({"mqtt": counts["mqtt"]}, {})
    assert len(one) == 1
    assert "0/s sent" in one[0]


def test_plain_line() -> None:
    counts = {"mqtt": TransportCounts(sent=100, acked=90)}
    line = render_plain(20.0, counts, {"mqtt": Rates(5.0, 4.5, 0.0)}, Progress(400, 100))
    assert line == "   20.0s  mqtt 5/s sent 4/s acked (90 acked, 0 errors)  25% ETA 1:00"
    assert render_plain(1.0, counts, {}, None) == (
        "    1.0s  mqtt 0/s sent 0/s acked (90 acked, 0 errors)"
    )


def test_display_on_a_terminal_redraws_in_place() -> None:
    out = io.StringIO()
    counts = {"mqtt": TransportCounts()}
    progress = Progress(10)
    display = Display(out, counts, progress, live=True)
    counts["mqtt"].sent, counts["mqtt"].acked, progress.done = 100, 80, 2
    display.tick(1.0)
    first = out.getvalue()
    assert first.count("\n") == 3  # head, mqtt, progress
    assert "\x1b[" not in first.split("\n")[0][:4]  # nothing to move up on the first draw
    assert "100/s sent" in first
    assert "80/s acked" in first
    assert "[######" in first
    assert "20% 2/10" in first
    counts["mqtt"].sent, counts["mqtt"].acked, progress.done = 300, 280, 4
    display.tick(2.0)
    second = out.getvalue()[len(first) :]
    assert second.startswith("\x1b[3F")  # back up over the three lines and redraw them
    assert "200/s sent" in second  # the rate over the last second, not the average
    assert "200/s acked" in second
    assert all(line.endswith("\x1b[K") for line in second.splitlines())


def test_display_in_a_log_writes_a_line_every_interval() -> None:
    out = io.StringIO()
    counts = {"mqtt": TransportCounts()}
    display = Display(out, counts, None, live=False, log_every=10.0)
    for second in range(1, 26):
        counts["mqtt"].sent = counts["mqtt"].acked = 100 * second
        display.tick(float(second))
    display.tick(25.5, final=True)
    lines = out.getvalue().splitlines()
    assert lines == [
        "   10.0s  mqtt 100/s sent 100/s acked (1,000 acked, 0 errors)",
        "   20.0s  mqtt 100/s sent 100/s acked (2,000 acked, 0 errors)",
    ]
    assert "\x1b" not in out.getvalue()
