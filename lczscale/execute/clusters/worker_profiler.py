"""Dask settings every lczscale worker runs with: the sampling profiler off.

Dask's worker profiler calls ``sys._current_frames()`` every 10 ms (distributed already
skips its event-loop sampler on Python 3.11 for this reason, but not this one). On CPython
before 3.12 that call can run the garbage collector while it holds the interpreter's
thread-list lock, and a finaliser that then needs a lock deadlocks the whole process with the
GIL held (CPython gh-106883; the fix came after 3.11). It was
seen here as map workers frozen mid-read: every thread waiting for the GIL, the main thread in
``Worker.trigger_profile`` → ``_PyThread_CurrentFrames`` → ``gc_collect_main`` →
``PyThread_acquire_lock_timed``. The profile only feeds Dask's dashboard, so lczscale's
clusters start their workers without it (nanny config, job-script environment, pod
environment) and the map's worker plugin stops it on workers started by others.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

NO_PROFILER = {"distributed.worker.profile.enabled": False}
NO_PROFILER_ENV = {"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False"}
_CALLBACKS = ("profile", "profile-cycle")


def stop_profiler(worker: Any) -> bool:
    """Stop a running worker's sampling profiler; True when it had one."""
    stopped = False
    for name in _CALLBACKS:
        pc = worker.periodic_callbacks.pop(name, None)
        if pc is not None:
            pc.stop()
            stopped = True
    if stopped:
        log.warning("stopped the Dask profiler of worker %s (it can deadlock CPython < 3.12); "
                    "start workers with %s", getattr(worker, "name", "?"),
                    " ".join(f"{k}={v}" for k, v in NO_PROFILER_ENV.items()))
    return stopped
