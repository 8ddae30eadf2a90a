"""Worker threads that overlap the pipeline's stages: the decode (and damage detection) runs ahead of the
repair, and the encode and mux run behind it. FFmpeg, NumPy and OpenCV work without holding Python's lock,
so each stage gets a core of its own while the others work."""
from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

Item = TypeVar("Item")
_END = object()  # the marker that ends a handoff queue


def decoded_ahead(items: Iterator[Item], depth: int = 4) -> Iterator[Item]:
    """`items` produced by a worker thread, at most `depth` ahead of the consumer: FFmpeg (and NumPy
    and OpenCV) work without holding Python's lock, so a decode overlaps the consumer's own work (the
    bitstream detector's second decode, the pipeline's decode and detection). An error in the worker
    is raised in the consumer; closing the consumer stops the worker, which closes `items` in its
    own thread."""
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not offer(item):
                    break
        except BaseException as error:  # handed to the consumer, which raises it
            offer(error)
        else:
            offer(_END)
        finally:
            items.close()

    worker = threading.Thread(target=work, name="decoded-ahead", daemon=True)
    worker.start()
    try:
        while (item := handoff.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


@contextlib.contextmanager
def written_behind(write: Callable[[Item], None], depth: int = 4) -> Iterator[Callable[[Item], None]]:
    """A `put(item)` that hands items to `write`, called in order by a worker thread at most `depth` items
    behind: the encoder and the muxer work without holding Python's lock, so writing a frame overlaps the
    repair of the next ones (bbb 720p at 5% loss: 3.00 -> 2.86 times a plain decode + encode). An error in
    `write` is raised by the next put or on leaving the block; leaving the block waits until every item
    put is written, or, when an error leaves it, until the worker has stopped."""
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    failures: list[BaseException] = []

    def work() -> None:
        while (item := handoff.get()) is not _END:
            if failures:
                continue  # drained unwritten, so that the producer never waits on a dead writer
            try:
                write(item)
            except BaseException as error:  # handed to the producer, which raises it
                failures.append(error)

    def put(item: Item) -> None:
        if failures:
            raise failures[0]
        handoff.put(item)

    worker = threading.Thread(target=work, name="written-behind", daemon=True)
    worker.start()
    try:
        yield put
    finally:
        handoff.put(_END)
        worker.join()
    if failures:
        raise failures[0]
