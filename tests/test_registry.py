"""Registration: what `@app.model` refuses at decoration time, before any request."""

from collections.abc import AsyncIterator, Iterator

import pytest

from blazerpc import BlazeApp, ConfigurationError


def test_streaming_true_on_a_function_that_is_not_a_generator() -> None:
    app = BlazeApp()
    with pytest.raises(ConfigurationError) as info:

        @app.model("not-a-generator", streaming=True)
        async def coroutine(prompt: str) -> str:
            return prompt

    message = str(info.value)
    assert "not-a-generator" in message
    assert "yield" in message  # says what to change
    with pytest.raises(ConfigurationError, match="yield"):

        @app.model("plain", streaming=True)
        def plain(prompt: str) -> list[str]:
            return prompt.split()

    assert len(app.registry) == 0


def test_generator_without_streaming_true() -> None:
    app = BlazeApp()
    with pytest.raises(ConfigurationError) as info:

        @app.model("forgot")
        async def forgot(prompt: str) -> AsyncIterator[str]:
            yield prompt

    message = str(info.value)
    assert "forgot" in message
    assert "streaming=True" in message  # says what to change
    with pytest.raises(ConfigurationError, match="streaming=True"):

        @app.model("forgot-sync")
        def forgot_sync(prompt: str) -> Iterator[str]:
            yield prompt

    assert len(app.registry) == 0
