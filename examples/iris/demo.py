"""Start the iris server, query it, stop it: the whole BlazeRPC round trip in one command.

    .venv/bin/python examples/iris/demo.py        (or: make demo)

It runs the two commands a user would type in two terminals (``blaze serve`` and the
client), printing each one first, so the output shows what serving a model looks like.
Exits non-zero if the server does not come up, the client fails, or the server does not
shut down cleanly on SIGTERM.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
BLAZE = Path(sys.executable).with_name("blaze")  # the CLI installed alongside this Python
CLIENT = Path(__file__).resolve().with_name("client.py")
HOST = "127.0.0.1"


def free_port() -> int:
    """A port nobody is listening on right now, so the demo never collides with a real server."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until_serving(server: subprocess.Popen[bytes], address: str, timeout: float) -> None:
    """Poll the standard gRPC health service until the server reports SERVING."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited during start-up with code {server.returncode}")
        # A fresh channel per attempt: a refused connection would otherwise back off for seconds.
        with grpc.insecure_channel(address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet
        time.sleep(0.2)
    raise TimeoutError(f"server at {address} not serving after {timeout:.0f} s")


def show(command: list[str]) -> None:
    """Echo a command the way a user would type it from the repository root."""
    shown = [os.path.relpath(arg, REPO) if os.path.isabs(arg) else arg for arg in command]
    print("$", " ".join(shown), flush=True)


def main() -> int:
    """Run the demo; return the process exit code."""
    if not BLAZE.exists():
        print(f"{BLAZE} not found: install the project first (pip install -e .)", file=sys.stderr)
        return 1
    port = free_port()
    serve = [str(BLAZE), "serve", "examples.iris.app:app", "--host", HOST, "--port", str(port)]
    query = [sys.executable, str(CLIENT), "--host", HOST, "--port", str(port)]

    show(serve)
    server = subprocess.Popen(serve, cwd=REPO)
    client_ok = False
    try:
        wait_until_serving(server, f"{HOST}:{port}", timeout=30)
        show(query)
        client_ok = subprocess.run(query, cwd=REPO, timeout=60).returncode == 0
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            server_code = server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            server_code = None
    print(f"server stopped (exit code {server_code})")

    if client_ok and server_code == 0:
        print("demo ok")
        return 0
    print("demo FAILED", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
