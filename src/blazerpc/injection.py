"""Context and Depends: values the server hands a model besides its request fields.

A parameter annotated `Context` receives the call's context; a parameter whose default is
`Depends(fn)` receives `fn(context)` (sync or async), resolved per call. Neither appears in
the schema.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Context:
    """What a model may know about the call: metadata (lower-case keys), peer, full method
    path, and the app's shared `state`."""

    metadata: Mapping[str, Any]
    peer: str
    method: str
    app_state: Any


class Depends:
    """`param: T = Depends(fn)`: `fn(context)` is called per request and its value injected."""

    def __init__(self, dependency: Callable[[Context], Any]) -> None:
        self.dependency = dependency
        self.is_async = inspect.iscoroutinefunction(dependency)

    @property
    def fn(self) -> Callable[[Context], Any]:
        """The dependency function, by 2.2.1's name."""
        return self.dependency

    def __repr__(self) -> str:
        return f"Depends({getattr(self.dependency, '__qualname__', self.dependency)!r})"


def injected_marker(param: inspect.Parameter, annotation: Any) -> type[Context] | Depends | None:
    """For the registry: what the server supplies for this parameter, if anything (the
    Context class itself marks a parameter that receives the call's context)."""
    if isinstance(param.default, Depends):
        return param.default
    if annotation is Context:
        return Context
    return None


def injector(injected: Mapping[str, Any]) -> Callable[[Context], Awaitable[dict[str, Any]]]:
    """Build once per model the function that computes its injected arguments for a call."""
    items = list(injected.items())

    async def resolve(context: Context) -> dict[str, Any]:
        values = {}
        for name, marker in items:
            if marker is Context:
                values[name] = context
            elif marker.is_async:
                values[name] = await marker.dependency(context)
            else:
                value = marker.dependency(context)
                # e.g. an object with `async def __call__`, which is no coroutine function
                values[name] = await value if inspect.isawaitable(value) else value
        return values

    return resolve
