"""Every code block of the documentation, run as a reader would run it (tests/test_docs.py).

A page runs top to bottom in a fresh directory of its own:

- a block with `title="app.py"` (any file name, any language) is written to that file, which
  later blocks run or serve;
- any other `python` block runs in the page's Python session (tests/docs_kernel.py): one
  namespace for the whole page, top-level `await` allowed, as in `python -m asyncio`;
- a `console` (or `sh`) block runs each `$ command`; the lines under a command are its expected
  output, where `...` stands for any text;
- `<!-- docs-test: output -->` before a block: it is the expected output of the block before;
- `<!-- docs-test: server -->`: the block's first command is a server, started in the
  background (its expected output is the banner), stopped when the page ends;
- `<!-- docs-test: excerpt of PATH -->`: the block's lines (but `...`) are lines of that
  file (in the page's directory, else in the repository), in order; `output excerpt`: of the
  output of the block before;
- `<!-- docs-test: page runs from the repository root -->`: commands run there, not in a
  fresh directory (the example READMEs, whose commands name files of the repository);
- `<!-- docs-test: server log -->`: the block's lines appear in what the last server started
  has printed so far (its log);
- `<!-- docs-test: not run: REASON -->`: a block that cannot run here (another language's
  toolchain, a cluster); tests/test_docs.py counts these per page;
- `<!-- docs-test: needs models -->` before a block, or `<!-- docs-test: page needs models -->`
  anywhere: it needs the framework extras and runs under `make test-models` only;
- `<!-- example: NAME -->` (docs/protocols.md): run by the protocol tests
  (tests/protocol_servers.py), with the output block right after it.

The documented ports (DOCUMENTED_PORTS) and 0.0.0.0 are replaced by free ports and
127.0.0.1, in the code and in its expected output alike, so pages run side by side.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .support import free_port, listening

ROOT = Path(__file__).resolve().parent.parent
KERNEL = Path(__file__).resolve().parent / "docs_kernel.py"
PAGES = sorted(
    [
        ROOT / "README.md",
        ROOT / "CHANGELOG.md",
        *ROOT.glob("docs/**/*.md"),
        *ROOT.glob("examples/*/README.md"),
    ]
)
RUNNABLE = {"python", "console", "sh"}  # and any block with a title: a file
DOCUMENTED_PORTS = ("50051", "50052", "50053", "50054", "50055", "8000", "8080", "9090", "9091")

_FENCE = re.compile(
    r"^(?P<indent> *)```(?P<info>[^`\n]*)\n(?P<code>.*?)^(?P=indent)```\s*$", re.M | re.S
)
# The pages' commands that come from outside the dev extra, and where to get them.
_PACKAGES = {"curl": "Debian: apt-get install curl", "node": "Debian: apt-get install nodejs npm"}
_PACKAGES["npm"] = _PACKAGES["node"]
_DIRECTIVE = re.compile(r"<!-- (docs-test|example): (.*?) -->")
_TITLE = re.compile(r'title="([^"]+)"')


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    title: str | None = None
    directives: list[str] = field(default_factory=list)
    example: str | None = None  # docs/protocols.md's named examples
    output: Block | None = None  # the block that shows this one's output
    is_output: bool = False

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"

    @property
    def not_run(self) -> str | None:
        for d in self.directives:
            if d.startswith("not run:"):
                return d.removeprefix("not run:").strip()
        return None

    @property
    def excerpt_of(self) -> str | None:
        for d in self.directives:
            if d.startswith("excerpt of "):
                return d.removeprefix("excerpt of ").strip()
        return None

    @property
    def needs_models(self) -> bool:
        return "needs models" in self.directives


def blocks(page: Path) -> list[Block]:
    """The page's fenced blocks in order, each with the directives in the comments above it."""
    text = page.read_text()
    found: list[Block] = []
    previous_end = 0
    for match in _FENCE.finditer(text):
        info = match.group("info").strip()
        lang = info.split()[0] if info else ""
        title = _TITLE.search(info)
        before = text[: match.start()].rstrip("\n").splitlines()
        directives, example = [], None
        while before and (d := _DIRECTIVE.fullmatch(before[-1].strip())):
            if d.group(1) == "example":
                example = d.group(2)
            else:
                directives.insert(0, d.group(2).strip())
            before.pop()
        indent = match.group("indent")
        code = re.sub(rf"^{indent}", "", match.group("code"), flags=re.M)
        block = Block(
            page,
            text.count("\n", 0, match.start()) + 1,
            lang,
            code,
            title.group(1) if title else None,
            directives,
            example,
        )
        previous = found[-1] if found else None
        adjacent = text[previous_end : match.start()].strip() == ""
        if previous and ("output" in directives or "output excerpt" in directives):
            previous.output, block.is_output = block, True
        elif previous and previous.example and not (example or directives) and adjacent:
            # A protocol example's output follows it directly (tests/protocol_servers.py).
            previous.output, block.is_output = block, True
        found.append(block)
        previous_end = match.end()
    return found


def census() -> str:
    """The docs' code blocks by what the suite does with them."""
    kinds: dict[str, int] = {}
    for page in PAGES:
        for b in blocks(page):
            if b.is_output:
                kind = "expected outputs checked"
            elif b.example:
                kind = "run by the protocol tests"
            elif b.not_run is not None:
                kind = "not run (each says why)"
            elif b.needs_models or page_needs_models(page):
                kind = "run by make test-models"
            else:
                kind = "run"
            kinds[kind] = kinds.get(kind, 0) + 1
    return "docs code blocks: " + ", ".join(f"{n} {kind}" for kind, n in kinds.items())


def page_needs_models(page: Path) -> bool:
    return "<!-- docs-test: page needs models -->" in page.read_text()


def page_runs_from_root(page: Path) -> bool:
    return "<!-- docs-test: page runs from the repository root -->" in page.read_text()


def check_excerpt(block: Block, source: str) -> None:
    """Each line of the block but `...` starts a line of `source`, in the same order."""
    lines = [line.strip() for line in source.splitlines()]
    at = 0
    for line in block.code.splitlines():
        wanted = line.split("  # ")[0].strip()  # the comment may be the page's own
        if wanted in ("", "..."):
            continue
        try:
            at = next(i for i in range(at, len(lines)) if lines[i].startswith(wanted)) + 1
        except StopIteration:
            raise AssertionError(
                f"{block.where}: {wanted!r} is not a line of {source} (after line {at})"
            ) from None


def problems(page: Path) -> list[str]:
    """Blocks the runner would not run and that say nothing about why."""
    out = []
    for b in blocks(page):
        if b.is_output or b.example or b.not_run is not None or b.excerpt_of:
            continue
        if "server log" in b.directives or b.title:
            continue
        if b.lang not in RUNNABLE:
            out.append(
                f"{b.where}: a ```{b.lang} block that is not run: mark it "
                "`<!-- docs-test: not run: REASON -->` or `<!-- docs-test: output -->`"
            )
    return out


# --------------------------------------------------------------------------- running


def matches(expected: str, got: str) -> bool:
    """`got` is `expected`, where `...` in `expected` stands for any text (trailing spaces and
    blank lines at either end ignored)."""

    def norm(s: str) -> str:
        return "\n".join(line.rstrip() for line in s.strip("\n").splitlines()).strip()

    pattern = ".*?".join(re.escape(part) for part in norm(expected).split("..."))
    return re.fullmatch(pattern, norm(got), re.S) is not None


@dataclass
class Command:
    line: str
    expected: str


def commands(code: str) -> list[Command]:
    """`$ command` lines (joined over trailing backslashes) and the output under each."""
    out: list[Command] = []
    lines = code.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            raise ValueError(f"console block line {lines[i]!r} follows no `$ command`")
        command = lines[i][2:]
        while command.endswith("\\"):
            i += 1
            command += "\n" + lines[i]  # bash reads the backslash-newline as one line
        i += 1
        expected = []
        while i < len(lines) and not lines[i].startswith("$ "):
            expected.append(lines[i])
            i += 1
        out.append(Command(command, "\n".join(expected)))
    return out


class PageRun:
    """One page's directory, ports, Python session and background servers."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = {port: str(free_port()) for port in DOCUMENTED_PORTS}
        self.kernel: subprocess.Popen[str] | None = None
        self.servers: list[tuple[subprocess.Popen[bytes], list[bytes]]] = []
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": os.pathsep.join([str(workdir), str(ROOT)]),
            "PYTHONUNBUFFERED": "1",
        }

    def sub(self, text: str) -> str:
        for documented, port in self.ports.items():
            text = re.sub(rf"\b{documented}\b", port, text)
        text = text.replace("0.0.0.0", "127.0.0.1").replace("localhost:", "127.0.0.1:")
        # `blaze serve` binds 0.0.0.0:50051 unless told otherwise.
        text = re.sub(r"\bblaze serve (?!.*--host)(\S+)", r"blaze serve \1 --host 127.0.0.1", text)
        port = self.ports["50051"]
        return re.sub(r"\bblaze serve (?!.*--port)(\S+)", rf"blaze serve \1 --port {port}", text)

    # python

    def run_python(self, block: Block) -> str:
        if self.kernel is None:
            self.kernel = subprocess.Popen(
                [sys.executable, str(KERNEL)],
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        assert self.kernel.stdin and self.kernel.stdout
        request = {"code": self.sub(block.code), "name": block.where}
        self.kernel.stdin.write(json.dumps(request) + "\n")
        self.kernel.stdin.flush()
        reply = self.kernel.stdout.readline()
        if not reply:
            raise AssertionError(f"{block.where}: the Python session died")
        result = json.loads(reply)
        if result["error"]:
            raise AssertionError(
                f"{block.where} raised:\n{result['error']}\noutput:\n{result['output']}"
            )
        return str(result["output"])

    # shell

    def run_command(self, block: Block, command: Command) -> None:
        line = self.sub(command.line)
        proc = subprocess.run(
            ["bash", "-c", line],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
            check=False,
        )
        got = proc.stdout  # stdout and stderr together, as a terminal shows them
        tool = line.split()[0]
        assert proc.returncode != 127, (
            f"{block.where}: `{tool}` is not installed; the page runs it "
            f"({_PACKAGES.get(tool, 'install it')})"
        )
        if command.expected.strip():
            expected = self.sub(command.expected)
            assert matches(expected, got), (
                f"{block.where}: `{line}` printed\n{got}\nthe page shows\n{expected}"
            )
        else:
            assert proc.returncode == 0, f"{block.where}: `{line}` exited {proc.returncode}:\n{got}"

    def start_server(self, block: Block, command: Command) -> None:
        line = self.sub(command.line)
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {line}"],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        output: list[bytes] = []
        assert proc.stdout is not None
        threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]
        ports = [p for p in self.ports.values() if re.search(rf"\b{p}\b", line)]
        self.servers.append((proc, output))
        expected = self.sub(command.expected)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = b"".join(output).decode()
            banner_ok = not expected.strip() or matches(expected, got)
            if banner_ok and all(listening(int(p)) for p in ports):
                return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(
            f"{block.where}: `{line}` did not come up as the page shows; it printed\n"
            f"{b''.join(output).decode()}\nthe page shows\n{expected}"
        )

    def check_server_log(self, block: Block) -> None:
        assert self.servers, f"{block.where}: a server log, but no server was started"
        expected = self.sub(block.code)
        deadline = time.monotonic() + 10
        while True:  # the line may be written a moment after the client's call returned
            got = b"".join(self.servers[-1][1]).decode()
            if matches(f"...{expected.strip()}...", got):
                return
            assert time.monotonic() < deadline, (
                f"{block.where}: the server's log lacks\n{expected}\nit has\n{got}"
            )
            time.sleep(0.1)

    def run_console(self, block: Block) -> None:
        cmds = commands(block.code)
        for i, command in enumerate(cmds):
            if i == 0 and "server" in block.directives:
                self.start_server(block, command)
            else:
                self.run_command(block, command)

    # the page

    def run(self, block: Block) -> None:
        if (name := block.excerpt_of) is not None:
            path = self.workdir / name if (self.workdir / name).exists() else ROOT / name
            check_excerpt(block, path.read_text())
        elif "server log" in block.directives:
            self.check_server_log(block)
        elif block.title:
            path = self.workdir / block.title
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.sub(block.code))
        elif block.lang == "python":
            got = self.run_python(block)
            if block.output is not None and "output excerpt" in block.output.directives:
                check_excerpt(block.output, got)
            elif block.output is not None:
                expected = self.sub(block.output.code)
                assert matches(expected, got), (
                    f"{block.where} printed\n{got}\nthe page shows\n{expected}"
                )
        else:
            self.run_console(block)

    def close(self) -> None:
        if self.kernel is not None:
            self.kernel.kill()
            self.kernel.wait()
        for proc, _ in self.servers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def runnable(block: Block, with_models: bool) -> bool:
    if block.is_output or block.example or block.not_run is not None:
        return False
    return with_models or not block.needs_models


@contextlib.contextmanager
def page_run(page: Path, tmp: Path) -> Iterator[PageRun]:
    run = PageRun(ROOT if page_runs_from_root(page) else tmp)
    try:
        yield run
    finally:
        run.close()
