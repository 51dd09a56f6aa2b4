"""The OpenAI-compatible endpoints (issue 15), tested with the official `openai` client and curl
against a real server on a free HTTP port."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import aiohttp
import openai
import pytest

from blazerpc import BlazeApp, ConfigurationError, Server
from blazerpc.server.middleware import Middleware, RequestEvent, TokenAuthMiddleware

from .processes import run_tool
from .support import running

LATE_S = 0.5
STOP_ITEMS = 100


class Generation:
    """What the endless model did: how many tokens, and how it ended."""

    def __init__(self) -> None:
        self.produced = 0
        self.ended_by = ""
        self.ended = threading.Event()


def llm_app(generation: Generation, middleware: list[Middleware] | None = None) -> BlazeApp:
    app = BlazeApp(middleware=middleware)

    @app.model("words", streaming=True, openai=True)
    async def words(
        prompt: str, max_tokens: int = 16, temperature: float = 1.0
    ) -> AsyncIterator[str]:
        for word in prompt.split()[:max_tokens]:
            await asyncio.sleep(0)
            yield word + ("!" if temperature == 0 else " ")

    @app.model("sync-words", streaming=True, openai=True)
    def sync_words(prompt: str) -> Iterator[str]:
        yield from (w + " " for w in prompt.split())

    @app.model("shout", openai=True)
    def shout(prompt: str) -> str:
        return prompt.upper()

    @app.model("bracket", openai=True, chat_template=bracket_template)
    async def bracket(prompt: str) -> str:
        return prompt

    @app.model("endless", streaming=True, openai=True)
    async def endless(prompt: str) -> AsyncIterator[str]:
        try:
            while True:
                generation.produced += 1
                yield "tok "
                await asyncio.sleep(0.001)
        except BaseException as exc:
            generation.ended_by = type(exc).__name__
            raise
        finally:
            generation.ended.set()

    @app.model("fails-late", streaming=True, openai=True)
    async def fails_late(prompt: str) -> AsyncIterator[str]:
        yield "one "
        yield "two "
        raise ValueError("ran out of tokens")

    @app.model("fails-early", openai=True)
    async def fails_early(prompt: str) -> str:
        raise ValueError("no")

    @app.model("hidden")
    async def hidden(prompt: str) -> str:
        return prompt

    return app


def bracket_template(messages: Sequence[Mapping[str, str]]) -> str:
    return "".join(f"[{m['role']}]{m['content']}" for m in messages)


@asynccontextmanager
async def openai_client(
    middleware: list[Middleware] | None = None, api_key: str = "unused"
) -> AsyncIterator[tuple[Any, Server, Generation]]:
    generation = Generation()
    async with running(llm_app(generation, middleware), http=True) as server:
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key=api_key, max_retries=0
        )
        try:
            yield client, server, generation
        finally:
            await client.close()


async def test_models_lists_only_the_models_registered_with_openai() -> None:
    async with openai_client() as (client, _, _):
        page = await client.models.list()
        names = [m.id for m in page.data]
        assert names == ["words", "sync-words", "shout", "bracket", "endless", "fails-late",
                         "fails-early"]  # fmt: skip
        assert (await client.models.retrieve("shout")).id == "shout"
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("hidden")


@pytest.mark.parametrize("model", ["words", "sync-words"])
async def test_completions_whole_and_streamed(model: str) -> None:
    async with openai_client() as (client, _, _):
        completion = await client.completions.create(model=model, prompt="the quick brown fox")
        assert completion.object == "text_completion"
        assert completion.model == model
        assert completion.choices[0].text == "the quick brown fox "
        assert completion.choices[0].finish_reason == "stop"

        stream = await client.completions.create(model=model, prompt="a b c", stream=True)
        chunks = [c async for c in stream]
        assert [c.choices[0].text for c in chunks] == ["a ", "b ", "c ", ""]
        assert [c.choices[0].finish_reason for c in chunks] == [None, None, None, "stop"]
        assert len({c.id for c in chunks}) == 1


async def test_request_fields_fill_the_parameters_of_the_same_name() -> None:
    async with openai_client() as (client, _, _):
        completion = await client.completions.create(
            model="words", prompt="a b c d", max_tokens=2, temperature=0
        )
        assert completion.choices[0].text == "a!b!"
        with pytest.raises(openai.BadRequestError) as info:
            await client.completions.create(model="words", prompt="a", max_tokens="many")  # type: ignore[arg-type]
        error = info.value.body
        assert info.value.status_code == 400
        assert error["param"] == "max_tokens"
        assert error["type"] == "invalid_request_error"
        assert "field 'max_tokens': expected an integer" in error["message"]


async def test_chat_completions_use_the_default_template_whole_and_streamed() -> None:
    messages = [
        {"role": "system", "content": "be loud"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}],
        },
    ]
    async with openai_client() as (client, _, _):
        chat = await client.chat.completions.create(model="shout", messages=messages)
        assert chat.object == "chat.completion"
        assert chat.choices[0].message.role == "assistant"
        assert chat.choices[0].message.content == "SYSTEM: BE LOUD\nUSER: HI THERE\nASSISTANT:"

        stream = await client.chat.completions.create(model="words", messages=messages, stream=True)
        chunks = [c async for c in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert text == "system: be loud user: hi there assistant: "
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert all(c.object == "chat.completion.chunk" for c in chunks)


async def test_a_model_can_override_the_chat_template() -> None:
    async with openai_client() as (client, _, _):
        chat = await client.chat.completions.create(
            model="bracket", messages=[{"role": "user", "content": "x"}]
        )
        assert chat.choices[0].message.content == "[user]x"


async def test_a_unary_model_streams_as_one_chunk() -> None:
    async with openai_client() as (client, _, _):
        stream = await client.completions.create(model="shout", prompt="abc", stream=True)
        assert [c.choices[0].text async for c in stream] == ["ABC", ""]


async def test_sync_openai_client() -> None:
    async with openai_client() as (_, server, _):

        def call() -> tuple[str, list[str]]:
            with openai.OpenAI(
                base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="x", max_retries=0
            ) as client:
                whole = client.completions.create(model="shout", prompt="hey").choices[0].text
                stream = client.chat.completions.create(
                    model="words", messages=[{"role": "user", "content": "a b"}], stream=True
                )
                return whole, [c.choices[0].delta.content or "" for c in stream]

        whole, pieces = await asyncio.to_thread(call)
        assert whole == "HEY"
        assert "".join(pieces) == "user: a b assistant: "


async def test_errors_come_back_in_openai_shape_with_the_right_status() -> None:
    async with openai_client() as (client, _, _):
        with pytest.raises(openai.NotFoundError) as info:
            await client.completions.create(model="hidden", prompt="x")
        assert info.value.body["code"] == "model_not_found"
        assert "no model 'hidden'" in info.value.body["message"]
        with pytest.raises(openai.BadRequestError) as info:
            await client.completions.create(model="words", prompt="x", n=2)
        assert info.value.body["param"] == "n"
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="words", messages=[])
        assert info.value.body["param"] == "messages"
        with pytest.raises(openai.InternalServerError) as info:
            await client.completions.create(model="fails-early", prompt="x")
        assert info.value.body == {
            "message": "ValueError: no",
            "type": "server_error",
            "param": None,
            "code": "internal",
        }


async def test_an_error_mid_stream_arrives_after_the_chunks_sent() -> None:
    async with openai_client() as (client, server, _):
        stream = await client.completions.create(model="fails-late", prompt="x", stream=True)
        got = []
        with pytest.raises(openai.APIError, match="ValueError: ran out of tokens"):
            async for chunk in stream:
                got.append(chunk.choices[0].text)
        assert got == ["one ", "two "]
        url = f"http://127.0.0.1:{server.http_port}/v1/completions"
        body = {"model": "fails-late", "prompt": "x", "stream": True}
        async with aiohttp.ClientSession() as session, session.post(url, json=body) as reply:
            events = (await reply.text()).strip().split("\n\n")
        assert reply.status == 200
        assert (
            "ran out of tokens" in json.loads(events[-1].removeprefix("data: "))["error"]["message"]
        )
        assert "data: [DONE]" not in events  # the stream ended in error, not complete


async def test_bearer_token_auth_applies() -> None:
    auth = [TokenAuthMiddleware(tokens=["s3cret"])]
    async with openai_client(auth, api_key="wrong") as (client, server, _):
        with pytest.raises(openai.AuthenticationError) as info:
            await client.completions.create(model="shout", prompt="x")
        assert info.value.status_code == 401
        assert info.value.body["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
        with pytest.raises(openai.AuthenticationError):  # no hint of which models exist
            await client.completions.create(model="no-such-model", prompt="x")
        good = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="s3cret", max_retries=0
        )
        try:
            assert (await good.completions.create(model="shout", prompt="x")).choices[0].text == "X"
        finally:
            await good.close()


class Recorder(Middleware):
    def __init__(self) -> None:
        self.methods: list[str] = []

    async def on_request(self, event: RequestEvent) -> None:
        self.methods.append(event.method_name)


async def test_middleware_sees_the_openai_path_and_model() -> None:
    recorder = Recorder()
    async with openai_client([recorder]) as (client, _, _):
        await client.completions.create(model="shout", prompt="x")
        await client.chat.completions.create(
            model="words", messages=[{"role": "user", "content": "x"}], stream=True
        )
    assert recorder.methods == ["/v1/completions/shout", "/v1/chat/completions/words"]


async def test_a_client_that_disconnects_cancels_the_generator() -> None:
    async with openai_client() as (client, _, generation):
        stream = await client.completions.create(model="endless", prompt="x", stream=True)
        async for _ in stream:
            if generation.produced > 20:
                break
        await stream.close()
        left_at = generation.produced
        assert await asyncio.to_thread(generation.ended.wait, 5)
        assert generation.ended_by == "CancelledError"
        await asyncio.sleep(LATE_S)
        assert generation.produced - left_at < STOP_ITEMS


def curl() -> str:
    found = shutil.which("curl")
    if found is None:
        pytest.skip("curl is not installed (Debian: apt-get install curl)")
    return found


async def test_curl_streams_server_sent_events_ending_with_done() -> None:
    async with openai_client() as (_, server, _):
        url = f"http://127.0.0.1:{server.http_port}/v1/completions"
        body = json.dumps({"model": "words", "prompt": "a b", "stream": True})
        rc, out, err = await run_tool(
            curl(), "-sN", url, "-H", "Content-Type: application/json", "-d", body
        )
        assert rc == 0, err
        events = [line for line in out.split("\n\n") if line]
        assert all(e.startswith("data: ") for e in events)
        assert events[-1] == "data: [DONE]"
        texts = [json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]]
        assert texts == ["a ", "b ", ""]

        body = json.dumps({"model": "words", "prompt": "a b"})
        rc, out, err = await run_tool(
            curl(), "-s", "-w", "\n%{http_code}", url, "-H", "Content-Type: application/json",
            "-d", body,
        )  # fmt: skip
        text, _, status = out.rpartition("\n")
        assert status == "200"
        assert json.loads(text)["choices"][0]["text"] == "a b "

        rc, out, err = await run_tool(
            curl(), "-s", "-w", "\n%{http_code}", url, "-d", "{not json",
        )  # fmt: skip
        text, _, status = out.rpartition("\n")
        assert status == "400"
        assert json.loads(text)["error"]["type"] == "invalid_request_error"


# --- which models fit is decided at decoration time --------------------------------------------


def test_models_that_do_not_fit_are_configuration_errors() -> None:
    app = BlazeApp()

    async def numbers(n: int) -> str:
        return ""

    async def no_default(prompt: str, max_tokens: int) -> str:
        return ""

    async def not_text(prompt: str) -> int:
        return 0

    with pytest.raises(ConfigurationError, match=r"first parameter must be the prompt, a 'str'"):
        app.model("a", openai=True)(numbers)
    with pytest.raises(ConfigurationError, match=r"need defaults.*'max_tokens'"):
        app.model("b", openai=True)(no_default)
    with pytest.raises(ConfigurationError, match=r"must return 'str'"):
        app.model("c", openai=True)(not_text)
    with pytest.raises(ConfigurationError, match=r"chat_template needs openai=True"):
        app.model("d", chat_template=bracket_template)(not_text)


def test_streamed_input_models_have_no_openai_form() -> None:
    async def listen(prompt: AsyncIterator[str]) -> str:
        return ""

    with pytest.raises(ConfigurationError, match=r"takes a stream has no OpenAI form"):
        BlazeApp().model("e", openai=True)(listen)


async def test_timing_first_chunk_is_not_held_back() -> None:
    """The SSE response starts with the first chunk, not after the whole generation."""
    app = BlazeApp()
    release = asyncio.Event()

    @app.model("slow", streaming=True, openai=True)
    async def slow(prompt: str) -> AsyncIterator[str]:
        yield "first "
        await release.wait()
        yield "second "

    async with running(app, http=True) as server:
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="x", max_retries=0
        )
        try:
            stream = await client.completions.create(model="slow", prompt="x", stream=True)
            started = time.monotonic()
            first = await asyncio.wait_for(stream.__anext__(), 5)
            assert first.choices[0].text == "first "
            assert time.monotonic() - started < LATE_S
            release.set()
            assert [c.choices[0].text async for c in stream] == ["second ", ""]
        finally:
            await client.close()


async def test_a_batched_model_batches_its_openai_calls() -> None:
    app = BlazeApp()
    sizes: list[int] = []

    @app.model("batched-shout", openai=True, batched=True, max_batch_size=8, batch_timeout_ms=50)
    def batched_shout(prompt: list[str]) -> list[str]:
        sizes.append(len(prompt))
        time.sleep(0.2)  # while one call runs, the other requests queue up for the next
        return [p.upper() for p in prompt]

    async with running(app, http=True) as server:
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="x", max_retries=0
        )
        try:
            answers = await asyncio.gather(
                *(
                    client.completions.create(model="batched-shout", prompt=f"p{i}")
                    for i in range(6)
                )
            )
        finally:
            await client.close()
    assert [a.choices[0].text for a in answers] == [f"P{i}" for i in range(6)]
    assert max(sizes) > 1  # concurrent requests shared a model call


async def test_a_body_over_the_json_limit_is_413_before_it_is_read() -> None:
    generation = Generation()
    app = llm_app(generation)
    app.limits = replace(app.limits, max_json_bytes=4096)
    async with running(app, http=True) as server:
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="x", max_retries=0
        )
        try:
            with pytest.raises(openai.APIStatusError) as info:
                await client.completions.create(model="shout", prompt="x" * 10_000)
            assert info.value.status_code == 413
            assert "over the limit of 4096 bytes" in info.value.body["message"]
            assert (await client.completions.create(model="shout", prompt="ok")).choices
        finally:
            await client.close()
