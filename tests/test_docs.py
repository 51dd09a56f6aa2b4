"""Every code block of the documentation runs, and prints what the page shows
(tests/doc_snippets.py says how a page is run and how a block is marked).

docs/how-to/other-languages.md runs its Node client too, so node and npm must be installed,
and npm must reach its registry for @grpc/grpc-js (a few seconds, cached after the first).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from .doc_snippets import (
    PAGES,
    ROOT,
    blocks,
    matches,
    page_needs_models,
    page_run,
    problems,
    runnable,
)

# Blocks that cannot run here, per page: each is marked `<!-- docs-test: not run: REASON -->`
# on the page. A new one must be added here too, so none is left out unnoticed.
NOT_RUN = {
    "README.md": 1,  # make demo / make test / make docs
    "docs/architecture.md": 1,  # the layer diagram
    "docs/deployment.md": 5,  # TLS files of your own, Kubernetes YAML, PromQL, a log line
    "docs/getting-started/install.md": 2,  # pip install from a checkout, from a wheel
    "docs/how-to/other-languages.md": 2,  # Go, Java
    "docs/kubernetes.md": 4,  # docker and kubectl, cluster DNS, prometheus-adapter YAML
    "docs/models.md": 2,  # pip install, a model.onnx of your own
    "docs/performance.md": 2,  # a diagram, a banner excerpt
    "docs/protocols.md": 1,  # pip install
    "docs/streaming.md": 2,  # ConfigurationError messages, lines of tests/test_stream_input.py
    "examples/streaming/README.md": 2,  # Ctrl-C by hand, and its log line
}


def _params() -> list[object]:
    params = []
    for page in PAGES:
        name = str(page.relative_to(ROOT))
        needs = page_needs_models(page)
        if not needs:
            params.append(pytest.param(page, False, id=name))
        if needs or any(b.needs_models for b in blocks(page)):
            params.append(pytest.param(page, True, id=f"{name}[models]", marks=pytest.mark.models))
    return params


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("page", "with_models"), _params())
def test_page_runs_as_written(page: Path, with_models: bool, tmp_path: Path) -> None:
    with page_run(page, tmp_path) as run:
        for block in blocks(page):
            if runnable(block, with_models):
                run.run(block)


def test_every_block_runs_or_says_why_not() -> None:
    assert [p for page in PAGES for p in problems(page)] == []


def test_blocks_not_run_are_the_known_ones() -> None:
    counted = Counter(
        str(page.relative_to(ROOT)) for page in PAGES for b in blocks(page) if b.not_run is not None
    )
    assert dict(counted) == NOT_RUN


# The runner itself: a page that does not print what it shows must fail.


def _run_page(tmp_path: Path, text: str) -> None:
    page = tmp_path / "page.md"
    page.write_text(text)
    work = tmp_path / "work"
    work.mkdir()
    with page_run(page, work) as run:
        for block in blocks(page):
            if runnable(block, with_models=False):
                run.run(block)


def test_matches_reads_ellipsis_as_any_text() -> None:
    assert matches("a ... c\nd", "a bb\nb c\nd  \n")
    assert not matches("a ... c", "a b d")
    assert not matches("1", "2")


@pytest.mark.parametrize(
    "text",
    [
        "```python\nprint(1)\n```\n\n<!-- docs-test: output -->\n```text\n2\n```\n",
        "```console\n$ echo one\ntwo\n```\n",
        "```console\n$ false\n```\n",
        "```python\nraise ValueError('no')\n```\n",
        "<!-- docs-test: excerpt of README.md -->\n```python\nnot a line of the README\n```\n",
    ],
    ids=["python-output", "console-output", "console-exit", "python-raises", "excerpt"],
)
def test_a_page_that_does_not_do_what_it_shows_fails(tmp_path: Path, text: str) -> None:
    with pytest.raises(AssertionError):
        _run_page(tmp_path, text)


def test_a_page_that_does_what_it_shows_passes(tmp_path: Path) -> None:
    _run_page(
        tmp_path,
        '```python title="hello.py"\nprint("hello")\n```\n\n'
        "```console\n$ python hello.py\nhello\n```\n\n"
        "```python\nx = await __import__('asyncio').sleep(0, result=41)\n```\n\n"
        "```python\nprint(x + 1)\n```\n\n<!-- docs-test: output -->\n```text\n42\n```\n",
    )


def test_an_unmarked_block_in_another_language_is_a_problem(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```go\nfunc main() {}\n```\n\n<!-- docs-test: not run: go -->\n```go\n```\n")
    (problem,) = problems(page)
    assert "```go block that is not run" in problem
