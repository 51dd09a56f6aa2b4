"""Telephone keypad tones (DTMF) in, the digits they spell out: a streaming "transcriber"
that runs offline on numpy alone.

Audio arrives as a stream of float32 chunks of any length at 8 kHz, the way a phone line or
a microphone delivers it. Two models read the same stream:

- `transcribe` (client-streaming, a plain `def` that runs in a worker thread): the whole
  number, once the caller has sent its last chunk;
- `transcribe-live` (bidirectional, `async def`): each digit the moment its tone has been
  heard, while the audio is still coming in.

    blaze serve examples.transcribe.app:app --port 50051
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import numpy as np

from blazerpc import BlazeApp, TensorInput

SAMPLE_RATE = 8000
ROWS = (697.0, 770.0, 852.0, 941.0)
COLUMNS = (1209.0, 1336.0, 1477.0, 1633.0)
KEYS = ("123A", "456B", "789C", "*0#D")
# 205 samples (25.6 ms) per frame: the classic Goertzel size at 8 kHz, fine enough to tell
# neighbouring row tones (73 Hz apart) apart and short enough for 40 ms key presses.
FRAME = 205
# A tone's share of the frame's power: 1/4 each for a clean two-tone key, near 0 for noise.
MIN_SHARE = 0.1
MIN_RMS = 0.01  # quieter than this is silence

_t = np.arange(FRAME) / SAMPLE_RATE
_BASIS = np.exp(-2j * np.pi * np.outer(_t, ROWS + COLUMNS))  # each frequency, evaluated exactly

Audio = TensorInput[np.float32, "samples"]


class DtmfDecoder:
    """Feed audio chunks of any size; get back the keys whose press has just been heard.

    A key counts once it is heard in two frames running, and once per press: the same key
    again needs a silent frame in between."""

    def __init__(self) -> None:
        self._pending = np.zeros(0, np.float32)
        self._candidate: str | None = None
        self._emitted = False

    def feed(self, chunk: np.ndarray) -> list[str]:
        self._pending = np.concatenate([self._pending, chunk])
        keys = []
        while len(self._pending) >= FRAME:
            frame, self._pending = self._pending[:FRAME], self._pending[FRAME:]
            key = self._key(frame)
            if key is not None and key == self._candidate and not self._emitted:
                keys.append(key)
                self._emitted = True
            elif key != self._candidate:
                self._candidate, self._emitted = key, False
        return keys

    @staticmethod
    def _key(frame: np.ndarray) -> str | None:
        energy = float(frame @ frame)
        if energy < FRAME * MIN_RMS**2:
            return None
        share = np.abs(frame @ _BASIS) ** 2 / (FRAME * energy)
        row, column = int(np.argmax(share[:4])), int(np.argmax(share[4:]))
        if share[row] < MIN_SHARE or share[4 + column] < MIN_SHARE:
            return None
        return KEYS[row][column]


app = BlazeApp(name="transcribe")


@app.model("transcribe")
def transcribe(audio: Iterator[Audio]) -> str:
    """The digits of the whole call, answered once the caller stops sending."""
    decoder = DtmfDecoder()
    return "".join(key for chunk in audio for key in decoder.feed(chunk))


@app.model("transcribe-live", streaming=True)
async def transcribe_live(audio: AsyncIterator[Audio]) -> AsyncIterator[str]:
    """Each digit as soon as it has been heard, while the audio keeps coming."""
    decoder = DtmfDecoder()
    async for chunk in audio:
        for key in decoder.feed(chunk):
            yield key
