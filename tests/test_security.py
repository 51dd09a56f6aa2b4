"""What a caller without a token learns: on every port, nothing about which models exist.

Health and reflection stay open by design (docs/security.md says so); everything that names
a model (its metadata, its readiness, that a name is unknown) answers only once the
middleware has admitted the call.
"""

from __future__ import annotations

import grpc
import pytest

from blazerpc import BlazeApp
from blazerpc.protocols.kserve import messages
from blazerpc.server.middleware import TokenAuthMiddleware

from .protocol_servers import http
from .support import running
from .wire import raw_call

TOKEN = {"authorization": "Bearer s3cret"}
KSERVE = "/inference.GRPCInferenceService"


def secret_app() -> BlazeApp:
    app = BlazeApp(middleware=[TokenAuthMiddleware(tokens=["s3cret"])])

    @app.model("classified-model")
    async def classified(text: str) -> str:
        return text

    return app


async def grpc_call(port: int, method: str, request: bytes, token: bool) -> grpc.StatusCode:
    metadata = tuple(TOKEN.items()) if token else ()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            await channel.unary_unary(method)(request, metadata=metadata, timeout=5)
        except grpc.aio.AioRpcError as exc:
            assert "classified" not in (exc.details() or "")
            return exc.code()
    return grpc.StatusCode.OK


KSERVE_CALLS = {
    "metadata": ("ModelMetadata", messages.ModelMetadataRequest(name="classified-model")),
    "ready": ("ModelReady", messages.ModelReadyRequest(name="classified-model")),
    "infer unknown": ("ModelInfer", messages.ModelInferRequest(model_name="nope")),
}


@pytest.mark.parametrize("case", KSERVE_CALLS)
async def test_kserve_grpc_says_nothing_of_models_without_a_token(case: str) -> None:
    rpc, request = KSERVE_CALLS[case]
    method, data = f"{KSERVE}/{rpc}", request.SerializeToString()
    async with running(secret_app(), http=True) as server:
        assert await grpc_call(server.port, method, data, False) is grpc.StatusCode.UNAUTHENTICATED
        admitted = await grpc_call(server.port, method, data, True)
        assert admitted is (grpc.StatusCode.NOT_FOUND if "unknown" in case else grpc.StatusCode.OK)
        # Liveness and health name no model, and stay open for probes.
        live = messages.ServerLiveRequest().SerializeToString()
        assert (await raw_call(server.port, f"{KSERVE}/ServerLive", live)).code is (
            grpc.StatusCode.OK
        )


REST_CALLS = {
    "metadata": ("/v2/models/classified-model", None, 200),
    "ready": ("/v2/models/classified-model/ready", None, 200),
    "infer unknown": ("/v2/models/nope/infer", {"inputs": []}, 404),
}


@pytest.mark.parametrize("case", REST_CALLS)
async def test_kserve_rest_says_nothing_of_models_without_a_token(case: str) -> None:
    path, body, admitted = REST_CALLS[case]
    async with running(secret_app(), http=True) as server:
        address = f"http://127.0.0.1:{server.http_port}{path}"
        refused = await http(address, body)
        assert refused.status == 401, refused.body
        assert b"classified" not in refused.body
        reply = await http(address, body, TOKEN)
        assert reply.status == admitted, reply.body


async def test_json_rpc_lists_models_only_to_admitted_callers() -> None:
    call = {"jsonrpc": "2.0", "method": "predict.nope", "params": {}, "id": 1}
    async with running(secret_app(), http=True) as server:
        address = f"http://127.0.0.1:{server.http_port}"
        for endpoint, body in (("/jsonrpc", call), ("/jsonrpc/stream/nope", {"params": {}})):
            refused = await http(address + endpoint, body)
            assert b"UNAUTHENTICATED" in refused.body and b"classified" not in refused.body
            admitted = await http(address + endpoint, body, TOKEN)
            assert b"-32601" in admitted.body and b"classified-model" in admitted.body
