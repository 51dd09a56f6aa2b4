"""A grpcio asyncio server that does nothing with a request but take its length, and answers
a ping: what grpcio's own receive of a large message costs the event loop, beside which
soak.py reads BlazeRPC's figure.

    python benchmarks/bare_receive_server.py   # prints its port, serves until killed
"""

from __future__ import annotations

import asyncio

import grpc


async def main() -> None:
    async def receive(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return str(len(data)).encode()

    async def ping(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b""

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 100 * 2**20)])
    handlers = {
        "Receive": grpc.unary_unary_rpc_method_handler(receive),
        "Ping": grpc.unary_unary_rpc_method_handler(ping),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("Bare", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
