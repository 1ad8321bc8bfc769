"""What `cp-agent run` does once started waits until the BootNotification went out.

The mock HAL answers its self-check at once, so ``Agent.ready`` is set before the link has
connected: the start-up housekeeping (a full collection, ``gc.freeze``, the dataclass cache's
save) ran before the BootNotification and was counted in every start-up (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import gc

from agent.cli import freeze_after_start


async def test_the_start_up_housekeeping_waits_for_the_first_boot_answer() -> None:
    ready, booted, other = asyncio.Event(), asyncio.Event(), asyncio.Event()
    task = asyncio.ensure_future(freeze_after_start(ready, [other, booted]))
    try:
        ready.set()
        for _ in range(5):  # the task runs up to its wait for a boot answer, no further
            await asyncio.sleep(0)
        assert not task.done() and gc.get_freeze_count() == 0
        booted.set()  # any of the version adapters' answers will do
        await asyncio.wait_for(task, 5)
        assert gc.get_freeze_count() > 0
    finally:
        task.cancel()
        gc.unfreeze()


async def test_a_station_that_cannot_reach_its_csms_gets_it_later() -> None:
    ready, booted = asyncio.Event(), asyncio.Event()
    ready.set()
    try:
        await asyncio.wait_for(freeze_after_start(ready, [booted], patience_s=0.01), 5)
        assert gc.get_freeze_count() > 0 and not booted.is_set()
    finally:
        gc.unfreeze()
