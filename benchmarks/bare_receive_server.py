"""A grpcio asyncio server that does no work of its own: the floor of what any server built on
grpcio can reach on this machine.

Without flags it takes a request's length and answers a ping: what grpcio's own receive of a
large message costs the event loop, beside which soak.py reads BlazeRPC's figure. With
``--reply METHOD=FILE`` (repeatable) it answers ``/blazerpc.InferenceService/METHOD`` with the
bytes of FILE, read once, whatever the request: no decoding, no model, no encoding, so per call
only grpcio's own cost remains, beside which bench_percall.py reads the servers' figures.
``--loop uvloop`` serves on uvloop (the loop ``blaze serve`` runs on) instead of asyncio's.

    python benchmarks/bare_receive_server.py [--host H] [--port P] [--reply M=FILE ...]
        [--loop asyncio|uvloop]
    # prints its port, serves until killed
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import grpc


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reply", action="append", default=[], metavar="METHOD=FILE")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:

    async def receive(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return str(len(data)).encode()

    async def ping(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b""

    def answer(reply: bytes) -> grpc.RpcMethodHandler:
        async def handler(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return reply

        return grpc.unary_unary_rpc_method_handler(handler)

    replies = dict(spec.split("=", 1) for spec in args.reply)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 100 * 2**20)])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "Bare",
                {
                    "Receive": grpc.unary_unary_rpc_method_handler(receive),
                    "Ping": grpc.unary_unary_rpc_method_handler(ping),
                },
            ),
            grpc.method_handlers_generic_handler(
                "blazerpc.InferenceService",
                {method: answer(Path(path).read_bytes()) for method, path in replies.items()},
            ),
        ]
    )
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    options = arguments()
    if options.loop == "uvloop":
        import uvloop

        uvloop.run(main(options))
    else:
        asyncio.run(main(options))
