"""Stream tokens from the `generate` example as they are sampled; `--stop-after N` hangs up
after N tokens, and the server log shows that generation stopped there.

    python examples/generate/client.py --port 50051 --prompt "Once upon a time" --max-tokens 80
"""

from __future__ import annotations

import argparse
import asyncio

from blazerpc import BlazeClient


async def stream(
    host: str, port: int, prompt: str, max_tokens: int, stop_after: int | None = None
) -> list[str]:
    """Print each token as it arrives; leaving the loop early cancels the call."""
    tokens: list[str] = []
    async with BlazeClient(host, port) as client:
        async for token in client.stream("generate", prompt=prompt, max_tokens=max_tokens):
            print(token, end="", flush=True)
            tokens.append(token)
            if len(tokens) == stop_after:
                break
    print()
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--stop-after", type=int, default=None)
    args = parser.parse_args()
    asyncio.run(stream(args.host, args.port, args.prompt, args.max_tokens, args.stop_after))


if __name__ == "__main__":
    main()
