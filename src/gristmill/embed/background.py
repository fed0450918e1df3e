"""Run an iterator on a background thread, a few items ahead of its consumer.

The embedding loop uses it twice: to read and tokenize the next chunk of a shard while the
model embeds the current one, and to collate and pin the next batch while the model runs. Both
producers spend their time in code that releases the GIL (Parquet decoding, the Rust
tokenizer, tensor copies).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def background(items: Iterable[T], *, depth: int = 2) -> Iterator[T]:
    """Yield `items`, produced up to `depth` ahead on a daemon thread.

    An exception in the producer is re-raised in the consumer. Closing the generator early
    (an error downstream, `break`) stops the producer at its next item.
    """
    slots: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if not _put(slots, item, stop):
                    return
            _put(slots, _DONE, stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            _put(slots, _Failure(exc), stop)

    thread = threading.Thread(target=produce, name="gristmill-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=5)


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _put(slots: queue.Queue[object], item: object, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            slots.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
