"""Sample meta-batches ahead of training in a background thread, without losing exact resume.

The thread draws batches in order from one ``torch.Generator`` and hands each over together with
the generator state right *after* it was drawn (:attr:`Prefetcher.state_after`, updated by
:meth:`Prefetcher.next`). The trainer copies that state once the iteration that used the batch is
complete, and checkpoints the copy: a resumed run then draws exactly the batches an uninterrupted
run would have, however far ahead the thread had got, and a stop in the middle of an iteration
does not skip the batch it had drawn. Decoding images (lazily loaded datasets) and building
episodes then overlap with the meta-step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import torch

from innerloop.types import Task


class Prefetcher:
    def __init__(self, sample: Callable[[int, torch.Generator], Task], meta_batch: int, gen: torch.Generator,
                 depth: int = 2):
        self.sample, self.meta_batch, self.gen, self.depth = sample, meta_batch, gen, depth
        self.state_after = gen.get_state()  # state after the last batch handed out
        self._q: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = None
        if depth > 0:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self.sample(self.meta_batch, self.gen)
                item = (batch, self.gen.get_state())
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # hand the error to the consumer
            self._q.put((e, None))

    def next(self) -> Task:
        if self._thread is None:
            batch = self.sample(self.meta_batch, self.gen)
            self.state_after = self.gen.get_state()
            return batch
        batch, state = self._q.get()
        if isinstance(batch, BaseException):
            raise batch
        self.state_after = state
        return batch

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __iter__(self) -> Iterator[Task]:
        while True:
            yield self.next()
