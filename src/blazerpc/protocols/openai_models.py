"""Which models the OpenAI-compatible endpoints serve and how a request becomes their
arguments. Checked when the decorator runs, so a model that does not fit fails at start-up,
never per request; nothing here needs aiohttp.

A model fits when its first request field is a `str` (the prompt), every other field has a
default (an OpenAI client sends only what it was given), and it returns `str`, or yields `str`
chunks with `streaming=True`. A request's fields that have the name of one of the model's
parameters (`max_tokens`, `temperature`, ...) fill it; the model decides what it accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..exceptions import ConfigurationError, ValidationError
from ..runtime.registry import ModelEntry
from ..types import Scalar
from .json_values import fields_decoder

ChatTemplate = Callable[[Sequence[Mapping[str, str]]], str]


def default_chat_template(messages: Sequence[Mapping[str, str]]) -> str:
    """One `role: content` line per message, then `assistant:` for the model to continue.

    >>> default_chat_template([{"role": "user", "content": "Hi"}])
    'user: Hi\\nassistant:'
    """
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def check_openai_model(entry: ModelEntry) -> None:
    """Raise a ConfigurationError saying what to change if `entry` cannot be served as OpenAI."""
    where = f"model '{entry.name}' (openai=True)"
    params, result = entry.signature.params, entry.signature.result
    if entry.client_streaming:
        raise ConfigurationError(f"{where}: a model that takes a stream has no OpenAI form")
    if not params or params[0].type != Scalar(str):
        raise ConfigurationError(
            f"{where}: its first parameter must be the prompt, a 'str' (e.g. 'prompt: str')"
        )
    needed = [f.name for f in params[1:] if not f.has_default]
    if needed:
        raise ConfigurationError(
            f"{where}: parameters after the prompt need defaults, since OpenAI clients send "
            f"only what they were given; add one to {', '.join(map(repr, needed))}"
        )
    if result.type != Scalar(str):
        kind = "yield 'str' chunks" if entry.streaming else "return 'str'"
        raise ConfigurationError(f"{where}: it must {kind} to be served as completions")


class OpenAIModel:
    """One exposed model: how a prompt and a request body become its keyword arguments."""

    def __init__(self, entry: ModelEntry, chat_template: ChatTemplate | None) -> None:
        params = entry.signature.params
        self.name = entry.name
        self.prompt = params[0].name
        self.options = tuple(f.name for f in params[1:])
        self.chat_template = chat_template or default_chat_template
        self._decode = fields_decoder(params)

    def arguments(self, prompt: str, body: Mapping[str, Any]) -> dict[str, Any]:
        values = {name: body[name] for name in self.options if name in body}
        values[self.prompt] = prompt
        return self._decode(values, "")

    def chat_prompt(self, messages: Any) -> str:
        """The prompt for a chat request: its messages, checked, through the chat template."""
        if not isinstance(messages, list) or not messages:
            raise ValidationError("'messages' must be a non-empty array", field="messages")
        plain = []
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise ValidationError(f"'{where}' must be an object with a 'role'", field=where)
            plain.append({"role": message["role"], "content": _text(message.get("content"), where)})
        return self.chat_template(plain)


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or an array of text parts joined."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise ValidationError(
        f"'{where}.content' must be a string or an array of text parts", field=f"{where}.content"
    )
