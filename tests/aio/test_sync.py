"""Signal (broadcast, re-arms on notify) and Latch (auto-reset, re-arms on wait)."""

from __future__ import annotations

import trio
import trio.testing

from bridge.aio import Latch, Signal


async def test_signal_wakes_every_current_waiter_and_rearms() -> None:
    sig = Signal()
    woken: list[int] = []

    async def waiter(i: int) -> None:
        await sig.wait()
        woken.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(waiter, i)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == []
        sig.notify()
    assert sorted(woken) == [0, 1, 2]
    # re-armed: a notify that came before the wait is not seen by it
    with trio.move_on_after(0.05) as scope:
        await sig.wait()
    assert scope.cancelled_caught


async def test_latch_remembers_a_set_until_one_wait() -> None:
    latch = Latch()
    latch.set()
    latch.set()
    assert latch.is_set()
    with trio.fail_after(1):
        await latch.wait()  # set before the wait: returns at once
    assert not latch.is_set()
    with trio.move_on_after(0.05) as scope:
        await latch.wait()  # two sets, one wait: nothing left
    assert scope.cancelled_caught

    async def kick() -> None:
        await trio.testing.wait_all_tasks_blocked()
        latch.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(kick)
        with trio.fail_after(1):
            await latch.wait()
