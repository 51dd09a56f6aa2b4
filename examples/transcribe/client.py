"""Dial a number as keypad tones and stream the audio to the transcribe example, chunk by
chunk from a generator, as a phone line would deliver it.

    python examples/transcribe/client.py --port 50051 --number 5550100

With `--live` the digits print one by one while the audio is still being sent; without it
the whole number comes back once the last chunk has gone.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator

import numpy as np

from blazerpc import BlazeClient

SAMPLE_RATE = 8000
CHUNK_S = 0.02  # 20 ms of audio per message, as telephony sends it
KEYPAD = {  # the row tone, then each column tone's key
    697: dict(zip((1209, 1336, 1477, 1633), "123A", strict=True)),
    770: dict(zip((1209, 1336, 1477, 1633), "456B", strict=True)),
    852: dict(zip((1209, 1336, 1477, 1633), "789C", strict=True)),
    941: dict(zip((1209, 1336, 1477, 1633), "*0#D", strict=True)),
}
TONES = {key: (row, col) for row, keys in KEYPAD.items() for col, key in keys.items()}


def dial(number: str, tone_s: float = 0.08, gap_s: float = 0.06, seed: int = 0) -> np.ndarray:
    """The audio of keying `number`: each key's two tones, a pause, and some line noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(tone_s * SAMPLE_RATE)) / SAMPLE_RATE
    gap = np.zeros(int(gap_s * SAMPLE_RATE))
    pieces = [gap]
    for key in number:
        row, col = TONES[key]
        pieces += [0.4 * np.sin(2 * np.pi * row * t) + 0.4 * np.sin(2 * np.pi * col * t), gap]
    audio = np.concatenate(pieces)
    return (audio + rng.normal(0, 0.02, audio.shape)).astype(np.float32)


async def chunks(audio: np.ndarray, realtime: bool) -> AsyncIterator[np.ndarray]:
    """The audio in 20 ms chunks, paced like a live line unless `realtime` is off."""
    step = int(CHUNK_S * SAMPLE_RATE)
    for start in range(0, len(audio), step):
        if realtime:
            await asyncio.sleep(CHUNK_S)
        yield audio[start : start + step]


async def main(host: str, port: int, number: str, live: bool, realtime: bool) -> None:
    audio = dial(number)
    print(f"dialling {number}: {len(audio) / SAMPLE_RATE:.2f} s of audio", file=sys.stderr)
    started = time.perf_counter()
    async with BlazeClient(host, port) as client:
        if live:
            async for digit in client.stream("transcribe-live", audio=chunks(audio, realtime)):
                elapsed = time.perf_counter() - started
                print(f"{elapsed:6.2f} s  heard {digit}", flush=True)
        else:
            digits = await client.predict("transcribe", audio=chunks(audio, realtime))
            print(f"{time.perf_counter() - started:6.2f} s  transcript: {digits}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Stream keypad tones to the transcriber.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--number", default="5550100")
    parser.add_argument("--live", action="store_true", help="print digits as they are heard")
    parser.add_argument("--fast", action="store_true", help="send as fast as possible")
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port, args.number, args.live, not args.fast))
