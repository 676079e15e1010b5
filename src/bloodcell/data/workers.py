"""Run chunks of decoding work on a few threads, with a bounded shutdown.

Decoding goes through Pillow, which releases the GIL while it decodes and
resizes, so threads use several cores without a process pool. Threads matter
here because the data stage often runs inside a process that already holds
PyTorch or onnxruntime threads: forking such a process can leave a child
blocked for ever on a lock another thread held at fork time, and a pool waiting
for that child never returns.

At most ``2 * workers`` chunks are in flight, so memory stays bounded however
many chunks there are; when the caller fails or is interrupted, chunks not yet
started are cancelled, and shutdown waits only for the chunks already running.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

Task = TypeVar("Task")
Result = TypeVar("Result")

_END = object()


def for_each_result(work: Callable[[Task], Result], tasks: Iterable[Task], workers: int,
                    consume: Callable[[Result], None]) -> None:
    """Call ``consume(work(task))`` for every task, running ``work`` on up to ``workers`` threads.

    Results are consumed in the calling thread, in completion order. An
    exception from ``work`` or ``consume`` cancels the tasks not yet started and
    is raised once the running ones have finished.
    """
    tasks = list(tasks)
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            consume(work(task))
        return
    pool = ThreadPoolExecutor(max_workers=min(workers, len(tasks)), thread_name_prefix="bloodcell-decode")
    pending: set[Future] = set()
    queue = iter(tasks)
    try:
        for task in queue:
            pending.add(pool.submit(work, task))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                consume(future.result())
                task = next(queue, None)
                if task is not None:
                    pending.add(pool.submit(work, task))
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
