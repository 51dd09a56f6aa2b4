"""Context and Depends: values the server hands a model, never part of the wire schema."""

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from blazerpc import (
    BlazeApp,
    BlazeClient,
    BlazeRPCError,
    ConfigurationError,
    Context,
    Depends,
    RPCError,
    StatusCode,
    TensorInput,
    TensorOutput,
    ValidationError,
)

from .support import client_for, running

WHOAMI = "/blazerpc.InferenceService/PredictWhoami"


def current_user(ctx: Context) -> str:
    user = ctx.metadata.get("x-user")
    if user is None:
        raise RPCError(StatusCode.UNAUTHENTICATED, "x-user metadata is required")
    return user


async def tenant_db(ctx: Context) -> dict[str, str]:
    await asyncio.sleep(0)
    return ctx.app_state.databases[ctx.metadata.get("x-tenant", "default")]


def injecting_app() -> BlazeApp:
    app = BlazeApp()
    app.state.greeting = "hello"
    app.state.databases = {"default": {"name": "main"}, "acme": {"name": "acme-db"}}
    app.state.runs = 0

    @app.model("whoami")
    async def whoami(
        text: str,
        ctx: Context,
        user: str = Depends(current_user),
        db: dict = Depends(tenant_db),  # noqa: B008
    ) -> str:
        app.state.runs += 1
        return "|".join([text, ctx.method, ctx.peer, ctx.app_state.greeting, user, db["name"]])

    @app.model("whoami-sync")
    def whoami_sync(text: str, user: str = Depends(current_user)) -> str:
        return f"{text} from {user}"

    @app.model("tokens", streaming=True)
    async def tokens(prompt: str, ctx: Context) -> AsyncIterator[str]:
        for word in prompt.split():
            yield f"{ctx.metadata['x-user']}:{word}"

    return app


async def test_context_and_dependencies_arrive() -> None:
    app = injecting_app()
    async with client_for(app) as client:
        alice = client.with_options(metadata={"x-user": "alice", "x-tenant": "acme"})
        text, method, peer, greeting, user, db = (await alice.predict("whoami", text="hi")).split(
            "|"
        )
        assert (text, method, greeting, user, db) == (
            "hi",
            WHOAMI,
            "hello",
            "alice",
            "acme-db",
        )
        assert peer.startswith("ipv4:127.0.0.1:")

        bob = client.with_options(metadata={"X-User": "bob"})  # keys arrive lower-case
        assert (await bob.predict("whoami", text="yo")).split("|")[4:] == ["bob", "main"]
        assert await bob.predict("whoami-sync", text="yo") == "yo from bob"
        assert [t async for t in bob.stream("tokens", prompt="a b")] == ["bob:a", "bob:b"]


async def test_dependencies_run_per_call_and_may_reject() -> None:
    app = injecting_app()
    seen: list[str] = []

    @app.model("counted")
    async def counted(x: int, tag: str = Depends(lambda ctx: seen.append("dep") or "t")) -> str:
        return f"{x}{tag}"

    async with client_for(app) as client:
        assert [await client.predict("counted", x=i) for i in range(3)] == ["0t", "1t", "2t"]
        assert seen == ["dep"] * 3

        with pytest.raises(BlazeRPCError) as info:
            await client.predict("whoami", text="anonymous")
        assert info.value.code is StatusCode.UNAUTHENTICATED
        assert app.state.runs == 0


async def test_injected_parameters_stay_off_the_wire() -> None:
    app = injecting_app()
    proto = app.proto()
    assert "message WhoamiRequest {\n  string text = 1;\n}" in proto
    for name in ["ctx", "user", "db", "Context"]:
        assert name not in proto
    fields = app.schema.request_class("Whoami").DESCRIPTOR.fields
    assert [f.name for f in fields] == ["text"]

    async with client_for(app) as client:  # the schema comes from server reflection
        with pytest.raises(ValidationError, match="has no input 'user'"):
            await client.predict("whoami", text="x", user="mallory")
        alice = client.with_options(metadata={"x-user": "alice"})
        assert (await alice.predict("whoami", text="x")).split("|")[4] == "alice"


@pytest.mark.parametrize(
    "marker",
    ["context", "depends"],
)
def test_batched_models_cannot_take_injected_parameters(marker: str) -> None:
    app = BlazeApp()
    with pytest.raises(ConfigurationError, match="batched=True cannot take Context or Depends"):
        if marker == "context":

            @app.model("bad", batched=True)
            def bad(texts: list[str], ctx: Context) -> list[str]:
                return texts

        else:

            @app.model("bad", batched=True)
            def bad(texts: list[str], user: str = Depends(current_user)) -> list[str]:
                return texts


async def test_a_tensor_model_with_injection_runs_call_by_call() -> None:
    """Requests would otherwise share one model call, but each has its own context."""
    app = BlazeApp()

    @app.model("scale")
    def scale(x: TensorInput[np.float32, "batch", 2]) -> TensorOutput[np.float32, "batch", 2]:
        return x * 2

    @app.model("scale-for-user")
    def scale_for_user(
        x: TensorInput[np.float32, "batch", 2], ctx: Context
    ) -> TensorOutput[np.float32, "batch", 2]:
        return x * float(ctx.metadata["x-factor"])

    async with running(app) as server:
        assert set(server.stats()) == {"scale"}  # scale-for-user is not batched
        async with BlazeClient("127.0.0.1", server.port) as client:
            x = np.ones((1, 2), np.float32)

            async def scaled(factor: int) -> np.ndarray:
                call = client.with_options(metadata={"x-factor": str(factor)})
                return await call.predict("scale-for-user", x=x)

            results = await asyncio.gather(*(scaled(f) for f in range(1, 9)))
            for factor, result in enumerate(results, start=1):
                np.testing.assert_array_equal(result, x * factor)
        assert set(server.stats()) == {"scale"}


class TenantQuota:
    """A dependency object with an async __call__ (no coroutine function, still awaitable)."""

    def __init__(self, limits: dict[str, int]) -> None:
        self.limits = limits

    async def __call__(self, ctx: Context) -> int:
        await asyncio.sleep(0)
        return self.limits[ctx.metadata.get("x-tenant", "free")]


async def test_a_dependency_object_with_async_call_is_awaited() -> None:
    app = BlazeApp()

    @app.model("quota")
    async def quota(text: str, limit: int = Depends(TenantQuota({"free": 1, "pro": 100}))) -> int:
        return limit

    async with client_for(app) as client:
        assert await client.predict("quota", text="x") == 1
        pro = client.with_options(metadata={"x-tenant": "pro"})
        assert await pro.predict("quota", text="x") == 100
