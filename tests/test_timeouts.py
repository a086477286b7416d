"""Every test is bounded in real time: a deadlock fails that test, and the run goes on."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Final

import pytest

pytest_plugins = ["pytester"]

# The child run's timings, in seconds of real time. The conftest cancels a Trio test at a
# fraction of its limit and leaves pytest-timeout's thread (which ends the whole run) as the
# backstop at the limit itself. At the suite's 0.9 that gap is 0.2 s of a 2 s limit, and a
# loaded machine (load ~6.5 on 2 cores) spent it on a test's setup and unwinding: the backstop
# ended the child run. The child gets the same conftest with a smaller fraction instead, so the
# gap is 6 s while a hanging test still costs only its 2 s.
CHILD_LIMIT: Final = 8  # pytest-timeout's limit in the child: the backstop
CHILD_FRACTION: Final = 0.25  # the conftest's cancel point in the child: 2 s
CANCEL_AT: Final = CHILD_LIMIT * CHILD_FRACTION  # seconds


def _conftest_cancelling_at(fraction: float) -> str:
    text = (Path(__file__).parent / "conftest.py").read_text()
    line = "CANCEL_MARGIN: Final = 0.9"
    assert line in text, "the conftest's cancel fraction moved: update this test"
    return text.replace(line, f"CANCEL_MARGIN: Final = {fraction}")


@pytest.mark.slow
def test_a_deadlocked_test_fails_alone_and_the_run_goes_on(
    pytester: pytest.Pytester, real_deadline: float
) -> None:
    pytester.makeconftest(_conftest_cancelling_at(CHILD_FRACTION))
    pytester.makepyfile(leaks=(Path(__file__).parent / "leaks.py").read_text())  # conftest's
    pytester.makeini(
        f"""
        [pytest]
        trio_mode = true
        timeout = {CHILD_LIMIT}
        timeout_method = thread
        markers = slow: stress tests
        """
    )
    pytester.makepyfile(
        test_hangs="""
        import trio

        async def test_waits_for_nothing_on_a_virtual_clock(autojump_clock):
            await trio.Event().wait()

        async def test_sleeps_forever():
            await trio.sleep_forever()

        async def test_after_them():
            await trio.sleep(0)

        def test_plain_after_them():
            pass
        """
    )
    report = pytester.path / "report.xml"
    result = pytester.runpytest_subprocess(
        f"--junitxml={report}", timeout=real_deadline - time.monotonic()
    )
    # The conftest's cancellation failed each hanging test, not pytest-timeout's backstop
    # (which would have ended the run: no outcomes, a "Timeout" banner).
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines([f"*cancelled after {CANCEL_AT:.0f} s of real time*"])
    result.stdout.no_fnmatch_line("*+ Timeout +*")
    seconds = {
        case.get("name"): float(case.get("time", "nan"))
        for case in ET.parse(report).getroot().iter("testcase")
    }
    # Each hanging test ran until the cancel point (it hung, and was not cut short sooner).
    assert seconds["test_waits_for_nothing_on_a_virtual_clock"] >= CANCEL_AT
    assert seconds["test_sleeps_forever"] >= CANCEL_AT
