"""Every test is bounded in real time: a deadlock fails that test, and the run goes on."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


@pytest.mark.slow
def test_a_deadlocked_test_fails_alone_and_the_run_goes_on(pytester: pytest.Pytester) -> None:
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(leaks=(Path(__file__).parent / "leaks.py").read_text())  # conftest's
    pytester.makeini(
        """
        [pytest]
        trio_mode = true
        timeout = 2
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
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*cancelled after 2 s of real time*"])
