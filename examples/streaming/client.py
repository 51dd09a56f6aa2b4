"""Stream generated text from the ``generate`` model and print it as it arrives.

Tokens are printed the moment they arrive, then time to first token and throughput are
reported: the two numbers that matter for an interactive LLM-style service. Press Ctrl-C
mid-stream: leaving the ``async for`` loop cancels the RPC, and the server log shows that
generation stopped at that point instead of running on for nobody.

    python examples/streaming/client.py --port 50051 --prompt "It is a truth"
"""

import argparse
import asyncio
import sys
import time

from blazerpc import BlazeClient


async def main(host: str, port: int, prompt: str, max_tokens: int) -> None:
    """Stream one completion of ``prompt`` to stdout, then print timing statistics."""
    async with BlazeClient(host, port) as client:
        print(prompt, end="", flush=True)
        tokens = 0
        first_token_s: float | None = None
        start = time.perf_counter()
        status = "done"
        try:
            async for token in client.stream("generate", prompt=prompt, max_tokens=max_tokens):
                if first_token_s is None:
                    first_token_s = time.perf_counter() - start
                tokens += 1
                print(token, end="", flush=True)
        except (asyncio.CancelledError, KeyboardInterrupt):  # Ctrl-C (how depends on Python)
            status = "interrupted"
            raise
        finally:
            elapsed = time.perf_counter() - start
            ttft = f"{first_token_s * 1000:.0f} ms" if first_token_s is not None else "n/a"
            print(
                f"\n\n[{status}] {tokens} tokens in {elapsed:.2f} s: "
                f"time to first token {ttft}, {tokens / elapsed:.1f} tokens/s",
                file=sys.stderr,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Stream text from the streaming example server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--prompt", default="It is a truth universally acknowledged")
    parser.add_argument("--max-tokens", type=int, default=200)
    args = parser.parse_args()
    try:
        asyncio.run(main(args.host, args.port, args.prompt, args.max_tokens))
    except KeyboardInterrupt:
        sys.exit(130)  # the conventional exit status for "stopped by Ctrl-C"
