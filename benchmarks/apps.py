"""The benchmark models, served unchanged by BlazeRPC and by the reference release.

Both libraries expose ``from blazerpc import BlazeApp``, so one module keeps the
two servers running exactly the same user code.
"""

from blazerpc import BlazeApp

app = BlazeApp(name="bench")


@app.model("echo")
async def echo(text: str) -> str:
    return text


# BlazeRPC reads a streaming model's return annotation as the type of each message.
@app.model("tokens", streaming=True)
async def tokens(n: int) -> str:  # type: ignore[misc]
    for i in range(n):
        yield str(i)


# CPU-bound pure Python: one process can use one core at most (the GIL), whatever its threads.
@app.model("burn")
def burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total
