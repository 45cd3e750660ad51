"""Workers shared by priority: the full preset's cells on a GPU, where several cells run at once.

Each setting's stages run in a thread of their own (``plan.run_later_stages``) and hand their cells to one pool of
worker processes. ``submit(cell, priority)`` queues a cell and returns a future of its record; whenever a worker is
free, the waiting cell of the lowest priority starts (first come first among equals). Cells are handed to the
executor one at a time, never queued in it, so a cell submitted later with a lower priority (a setting's seeds,
priority 0) overtakes everything still waiting (the other setting's ablations, priority 1). A cell of priority > 0
also waits ``grace`` seconds before it may take a free worker: both settings' threads plan their first stages at
about the same moment, and the one that plans ablations first must not fill the workers before the other's curves
arrive (seen on an H200 before the grace: 17 setting-A cells took the workers 5 s before setting B's curves).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import threading
import time
from concurrent.futures import Executor, Future


class PriorityPool:
    """At most ``jobs`` calls of ``job(cell, force, *args)`` at once on ``executor``, lowest priority first."""

    def __init__(self, jobs: int, executor: Executor, job, args: tuple = (), grace: float = 5.0):
        self.jobs, self.executor, self.job, self.args, self.grace = jobs, executor, job, args, grace
        self.lock = threading.RLock()   # re-entrant: a done-callback may run inside ``_fill``
        self.waiting: list = []         # heap of (priority, order, not before (monotonic s), cell, force, future)
        self.order = itertools.count()
        self.running = 0

    def submit(self, cell, priority: int = 0, force: bool = False) -> Future:
        fut: Future = Future()
        with self.lock:
            due = time.monotonic() + self.grace if priority > 0 else 0.0
            heapq.heappush(self.waiting, (priority, next(self.order), due, cell, force, fut))
            self._fill()
        return fut

    def _fill(self) -> None:
        with self.lock:
            while self.running < self.jobs and self.waiting:
                due = self.waiting[0][2]
                if due > time.monotonic():   # the first waiting cell's grace is not over: look again then
                    timer = threading.Timer(due - time.monotonic(), self._fill)
                    timer.daemon = True
                    timer.start()
                    return
                _, _, _, cell, force, fut = heapq.heappop(self.waiting)
                self.running += 1
                try:
                    job = self.executor.submit(self.job, cell, force, *self.args)
                except RuntimeError:   # shut down (an interrupted run): the waiting cells stay unstarted
                    return
                job.add_done_callback(functools.partial(self._done, fut))

    def _done(self, fut: Future, job: Future) -> None:
        with self.lock:
            self.running -= 1
            self._fill()
        if job.exception() is not None:
            fut.set_exception(job.exception())
        else:
            fut.set_result(job.result())

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
