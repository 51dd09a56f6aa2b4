"""The app `soak.py` runs: sync and async models that take a while, and generators that keep
count of how many are open, so leaks show up as numbers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

from blazerpc import BlazeApp

app = BlazeApp(name="soak")
_lock = threading.Lock()
open_streams = {"open": 0, "closed": 0}


def _opened() -> None:
    with _lock:
        open_streams["open"] += 1


def _closed() -> None:
    with _lock:
        open_streams["open"] -= 1
        open_streams["closed"] += 1


@app.model("sync-sleep")
def sync_sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


@app.model("async-sleep")
async def async_sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


@app.model("async-drip", streaming=True)
async def async_drip(seconds: float) -> AsyncIterator[str]:
    _opened()
    try:
        for i in range(20):
            await asyncio.sleep(seconds)
            yield str(i)
    finally:
        _closed()


@app.model("sync-drip", streaming=True)
def sync_drip(seconds: float) -> Iterator[str]:
    _opened()
    try:
        for i in range(20):
            time.sleep(seconds)
            yield str(i)
    finally:
        _closed()


@app.model("streams")
async def streams() -> dict[str, int]:
    with _lock:
        return dict(open_streams)


@app.model("words")
def words(items: list[str]) -> int:
    return len(items)
