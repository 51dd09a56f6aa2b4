"""A stream of requests as a plain `def` model reads it: a blocking iterator, in the model's
worker thread, whose every `next()` asks the event loop for the next item.

Items are pulled, never pushed: the loop reads a message only when the model asks for one,
so a slow model leaves the rest in HTTP/2 flow control and a fast sender cannot fill memory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class ThreadIterator(Generic[T]):
    """`Iterator[T]` over an async iterator that lives on `loop`; `cancel()` (on the loop) makes
    the model's pending and later `next()` raise `asyncio.CancelledError`, so its `finally`
    blocks run at once instead of waiting for an item that will never come."""

    def __init__(self, items: AsyncIterator[T], loop: asyncio.AbstractEventLoop) -> None:
        self._items, self._loop = items, loop
        self._lock = threading.Lock()
        self._pending: concurrent.futures.Future[T] | None = None
        self._cancelled = False

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        with self._lock:
            if self._cancelled:
                raise asyncio.CancelledError()
            pending = asyncio.run_coroutine_threadsafe(self._next(), self._loop)
            self._pending = pending
        try:
            return pending.result()
        except StopAsyncIteration:
            raise StopIteration from None
        except concurrent.futures.CancelledError:
            raise asyncio.CancelledError() from None

    async def _next(self) -> T:
        return await self._items.__anext__()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            pending = self._pending
        if pending is not None:
            pending.cancel()
