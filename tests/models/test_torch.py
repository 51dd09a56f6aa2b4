"""`blazerpc.contrib.torch` on a real server: zero-copy tensors, inference mode, devices and
dtypes, one forward at a time, warm-up at start-up, and torch threads shared between workers."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import warnings

import numpy as np
import pytest

from blazerpc import BlazeApp, BlazeClient, TensorInput, TensorOutput

from ..processes import blaze_serve, wait_serving
from ..support import free_port, running


async def test_a_served_model_gets_tensors_in_inference_mode_without_a_warning() -> None:
    import torch

    from blazerpc.contrib.torch import torch_model

    app = BlazeApp(enable_batching=False)
    seen: dict[str, object] = {}

    @app.model("scale")
    @torch_model
    def scale(x: TensorInput[np.float32, "batch", 256]) -> TensorOutput[np.float32, "batch", 256]:
        seen["type"] = type(x)
        seen["grad_mode"] = torch.is_inference_mode_enabled()
        return x * 2

    x = np.arange(512, dtype=np.float32).reshape(2, 256)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the read-only view must not warn
        async with running(app) as server, BlazeClient("127.0.0.1", server.port) as client:
            got = await client.predict("scale", x=x)
    np.testing.assert_array_equal(got, x * 2)
    assert seen["type"] is torch.Tensor
    assert seen["grad_mode"] is True


def test_a_tensor_over_a_read_only_array_shares_its_memory_without_a_warning() -> None:
    from blazerpc.contrib.torch import torch_model

    data = np.arange(64, dtype=np.float32).tobytes()
    frozen = np.frombuffer(data, np.float32)
    pointers: list[int] = []

    @torch_model
    def model(x):  # type: ignore[no-untyped-def]
        pointers.append(x.data_ptr())
        return x + 1

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model(x=frozen)
    assert pointers == [frozen.ctypes.data]  # no copy
    np.testing.assert_array_equal(out, frozen + 1)
    assert isinstance(out, np.ndarray)


def test_floating_inputs_take_the_dtype_and_ids_keep_theirs() -> None:
    import torch

    from blazerpc.contrib.torch import torch_model

    got: dict[str, torch.dtype] = {}

    @torch_model(dtype=torch.bfloat16, device="cpu")
    def model(x, ids):  # type: ignore[no-untyped-def]
        got["x"], got["ids"], got["device"] = x.dtype, ids.dtype, x.device.type
        return (x * 2, ids)

    x, ids = np.ones((2, 32), np.float32), np.arange(16, dtype=np.int64)
    doubled, same_ids = model(x, ids=ids)
    assert got == {"x": torch.bfloat16, "ids": torch.int64, "device": "cpu"}
    assert doubled.dtype == np.float32 and doubled.tolist() == (x * 2).tolist()  # bf16 -> f32
    assert same_ids.dtype == np.int64 and same_ids.tolist() == ids.tolist()


async def test_concurrency_caps_the_forwards_running_at_once() -> None:
    from blazerpc.contrib.torch import torch_model

    def counting(concurrency: int | None) -> tuple[BlazeApp, list[int]]:
        app = BlazeApp(enable_batching=False)
        running_now, peak = [0], [0]
        lock = threading.Lock()

        @app.model("slow")
        @torch_model(concurrency=concurrency)
        def slow(x: TensorInput[np.float32, 4]) -> TensorOutput[np.float32, 4]:
            with lock:
                running_now[0] += 1
                peak[0] = max(peak[0], running_now[0])
            time.sleep(0.2)  # long beside any scheduling delay of a loaded machine
            with lock:
                running_now[0] -= 1
            return x

        return app, peak

    peaks = {}
    for concurrency in (None, 1, 3):
        app, peak = counting(concurrency)
        async with running(app) as server, BlazeClient("127.0.0.1", server.port) as client:
            x = np.zeros(4, np.float32)
            results = await asyncio.gather(*(client.predict("slow", x=x) for _ in range(6)))
        assert all(r.tolist() == [0, 0, 0, 0] for r in results)
        peaks[concurrency] = peak[0]
    assert peaks[1] == 1 and peaks[3] == 3
    assert peaks[None] > 3  # uncapped: as many as the server's thread pool runs


async def test_a_cancelled_call_keeps_its_slot_until_its_forward_ends() -> None:
    from blazerpc.contrib.torch import torch_model

    started: list[float] = []

    @torch_model(concurrency=1)
    def slow(x):  # type: ignore[no-untyped-def]
        started.append(time.monotonic())
        time.sleep(0.2)
        return x

    first = asyncio.ensure_future(slow(x=np.zeros(4, np.float32)))
    await asyncio.sleep(0.05)
    first.cancel()
    await slow(x=np.zeros(4, np.float32))
    assert len(started) == 2
    assert started[1] - started[0] >= 0.19  # the second waited for the first's thread


async def test_a_forward_that_fails_after_its_caller_left_is_not_logged_as_lost(caplog) -> None:
    from blazerpc.contrib.torch import torch_model

    @torch_model(concurrency=1)
    def failing(x):  # type: ignore[no-untyped-def]
        time.sleep(0.1)
        raise RuntimeError("out of memory")

    call = asyncio.ensure_future(failing(x=np.zeros(4, np.float32)))
    await asyncio.sleep(0.02)
    call.cancel()
    await asyncio.sleep(0.3)  # the forward has failed by now, with nobody waiting
    del call
    gc.collect()
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_warm_up_runs_the_model_before_the_server_admits_calls() -> None:
    from blazerpc.contrib.torch import torch_model, warm_up

    app = BlazeApp()
    calls: list[list[float]] = []

    @app.model("double")
    @torch_model
    def double(x: TensorInput[np.float32, "batch", 2]) -> TensorOutput[np.float32, "batch", 2]:
        calls.append(x.flatten().tolist())
        return x * 2

    app.on_startup(warm_up(double, x=np.full((1, 2), 7, np.float32)))
    async with running(app) as server, BlazeClient("127.0.0.1", server.port) as client:
        assert calls == [[7.0, 7.0]]  # ran during start-up
        assert (await client.predict("double", x=np.ones((1, 2), np.float32))).tolist() == [[2, 2]]


def test_the_banner_says_where_a_torch_model_runs() -> None:
    from blazerpc.cli import banner
    from blazerpc.contrib.torch import torch_model

    app = BlazeApp(enable_batching=False)

    @app.model("one")
    @torch_model(concurrency=1)
    def one(x: TensorInput[np.float32, 4]) -> TensorOutput[np.float32, 4]:
        return x

    @app.model("two")
    @torch_model(concurrency=2)
    def two(x: TensorInput[np.float32, 4]) -> TensorOutput[np.float32, 4]:
        return x

    @app.model("free")
    @torch_model
    def free(x: TensorInput[np.float32, 4]) -> TensorOutput[np.float32, 4]:
        return x

    text = banner(app, "127.0.0.1", 50051)
    assert "unary, in threads, inline on the loop while calls take" in text  # as a plain def
    assert "unary, in threads, one call at a time (torch_model)" in text
    assert "unary, in threads, 2 calls at a time (torch_model)" in text


async def test_server_modes_say_a_capped_model_runs_in_threads() -> None:
    from blazerpc.contrib.torch import torch_model

    app = BlazeApp(enable_batching=False)

    @app.model("capped")
    @torch_model(concurrency=1)
    def capped(x: TensorInput[np.float32, 4]) -> TensorOutput[np.float32, 4]:
        return x

    server = await app.start("127.0.0.1", 0)
    try:
        assert server.modes() == {"capped": "threads"}  # awaited on the loop, run in a thread
    finally:
        await server.stop(0)


def test_generators_are_refused_with_a_clear_message() -> None:
    from blazerpc.contrib.torch import torch_model
    from blazerpc.exceptions import ConfigurationError

    def tokens(x):  # type: ignore[no-untyped-def]
        yield x

    with pytest.raises(ConfigurationError, match="'tokens' is a generator"):
        torch_model(tokens)


TORCH_APP = """
import numpy as np, torch
from blazerpc import BlazeApp, TensorInput, TensorOutput
from blazerpc.contrib.torch import torch_model

app = BlazeApp()

@app.model("threads")
@torch_model
def threads(x: TensorInput[np.float32, 1]) -> TensorOutput[np.int64, 1]:
    return torch.tensor([torch.get_num_threads()])
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_torch_threads_are_the_cores_divided_between_workers(tmp_path, workers: int) -> None:
    from blazerpc.contrib import cpu_count

    (tmp_path / "torch_app.py").write_text(TORCH_APP)
    port = free_port()
    with blaze_serve(
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--app-dir",
        str(tmp_path),
        app="torch_app:app",
    ) as proc:
        wait_serving(port, proc, timeout=60)

        async def ask() -> int:
            async with BlazeClient("127.0.0.1", port) as client:
                return int((await client.predict("threads", x=np.zeros(1, np.float32)))[0])

        assert asyncio.run(ask()) == max(1, cpu_count() // workers)
