"""The models of bench_stream_input.py: a bidirectional echo and an OpenAI-exposed token
generator, written as users write them. BlazeRPC alone (the reference release has neither
streamed inputs nor OpenAI endpoints), so kept apart from apps.py."""

from collections.abc import AsyncIterator

from blazerpc import BlazeApp

app = BlazeApp(name="bench-streams")


@app.model("echo-stream", streaming=True)
async def echo_stream(texts: AsyncIterator[str]) -> AsyncIterator[str]:
    async for text in texts:
        yield text


@app.model("tokens", streaming=True, openai=True)
async def tokens(prompt: str, max_tokens: int = 16) -> AsyncIterator[str]:
    for i in range(max_tokens):
        yield f" t{i}"
