"""Token-by-token text generation over a server-streaming RPC, with no model download.

The "model" is a word-level trigram Markov chain trained at start-up on ``corpus.txt``
(the opening chapters of *Pride and Prejudice* and *Moby-Dick*, both public domain).
It is tiny, but it is served exactly like an LLM: each generated word is sent to the
client as soon as it exists, and a short sleep per word stands in for the per-token cost
of a real model. When the client goes away (Ctrl-C), BlazeRPC cancels the generator, and
the ``finally`` below logs how far it got, so you can see that the server stopped working.

    blaze serve examples.streaming.app:app --host 127.0.0.1 --port 50051
"""

import asyncio
import itertools
import logging
import random
import zlib
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

from blazerpc import BlazeApp

TOKEN_DELAY_S = 0.02  # pretend each token costs 20 ms of accelerator time

log = logging.getLogger("examples.streaming")


def _key(word: str) -> str:
    """Match words regardless of case and punctuation, so a prompt need not copy the corpus."""
    return word.lower().strip('.,;:!?"-')


class TrigramModel:
    """Next word given the previous two (falling back to one, then to a sentence start)."""

    def __init__(self, text: str) -> None:
        words = text.split()
        self.by_two: defaultdict[tuple[str, str], list[str]] = defaultdict(list)
        self.by_one: defaultdict[str, list[str]] = defaultdict(list)
        for a, b, c in zip(words, words[1:], words[2:], strict=False):
            self.by_two[_key(a), _key(b)].append(c)
        for a, b in itertools.pairwise(words):
            self.by_one[_key(a)].append(b)
        # Words that follow the end of a sentence: where to restart when the context is unknown.
        self.starts = [b for a, b in itertools.pairwise(words) if a[-1] in '.!?"'] or words

    def next_word(self, context: list[str], rng: random.Random) -> str:
        """Sample the word after ``context``; repeated continuations are proportionally likelier."""
        recent = [_key(w) for w in context[-2:]]
        if len(recent) == 2 and (options := self.by_two.get((recent[0], recent[1]))):
            return rng.choice(options)
        if recent and (options := self.by_one.get(recent[-1])):
            return rng.choice(options)
        return rng.choice(self.starts)


model = TrigramModel(Path(__file__).with_name("corpus.txt").read_text(encoding="utf-8"))
app = BlazeApp(name="streaming")


@app.model("generate", streaming=True)
async def generate(prompt: str, max_tokens: int = 200) -> AsyncIterator[str]:
    """Continue ``prompt`` one word at a time; each yield is one message on the stream.

    Sampling is seeded from the prompt, so the same prompt gives the same text, which
    makes runs comparable. Each token carries its leading space so the client can print
    tokens back to back.
    """
    rng = random.Random(zlib.crc32(prompt.encode("utf-8")))
    context = prompt.split()
    sent = 0
    outcome = "client went away"
    try:
        while sent < max_tokens:
            await asyncio.sleep(TOKEN_DELAY_S)  # the "model" thinking
            word = model.next_word(context, rng)
            context.append(word)
            sent += 1
            yield (" " if sent > 1 or prompt else "") + word
        outcome = "max_tokens reached"
    except Exception:
        outcome = "error"
        raise
    finally:
        # Runs on normal completion and when the stream is cancelled mid-generation.
        log.info("generation stopped after %d tokens (%s)", sent, outcome)
