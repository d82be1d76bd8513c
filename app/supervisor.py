"""A worker of `hestia serve --workers N` stops when the serve process that started it is gone.

uvicorn's workers outlive a supervisor killed outright (SIGKILL, the OOM killer): they kept the
port and answered every request with a 503, since the audit relay and the embedded database
had stopped with it, and a new `hestia serve` could not bind the port. Each worker now looks
at its parent twice a second and, once it has changed, shuts itself down as a SIGTERM would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

log = logging.getLogger("hestia")

SUPERVISOR_ENV = "HESTIA_SUPERVISOR_PID"
POLL_S = 0.5


def supervisor_pid() -> int | None:
    """The serve process this worker belongs to, if it is one of several workers."""
    value = os.environ.get(SUPERVISOR_ENV, "")
    return int(value) if value.isdigit() else None


async def stop_when_orphaned(supervisor: int, *, poll_s: float = POLL_S) -> None:
    # Polled: nothing notifies a process that its parent has gone.
    while True:
        if os.getppid() != supervisor:
            break
        await asyncio.sleep(poll_s)
    log.warning("hestia serve (pid %d) is gone: stopping this worker", supervisor)
    os.kill(os.getpid(), signal.SIGTERM)
