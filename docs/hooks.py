"""MkDocs hooks: pages that have their source outside docs/, and the CLI reference.

The README is the home page, the CHANGELOG, LICENSE, benchmark results and example READMEs are
pages, and the CLI reference is written by typer from the `blaze` command itself, so none of
them is ever copied by hand. Links between these files are written as they work on a repository
browser (`docs/batching.md` from the README, `../benchmarks/RESULTS.md` from docs/); they are
rewritten here to the pages the site builds from those files.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

import click
import typer.main
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page
from typer.cli import get_docs_for_click

ROOT = Path(__file__).resolve().parent.parent

# repository path -> site page (source path under docs/)
PAGES = {
    "README.md": "index.md",
    "CHANGELOG.md": "changelog.md",
    "LICENSE": "license.md",
    "benchmarks/RESULTS.md": "benchmarks.md",
    "examples/streaming/README.md": "examples/streaming.md",
    "examples/transcribe/README.md": "examples/transcribe.md",
    "examples/embeddings/README.md": "examples/embeddings.md",
    "examples/onnx/README.md": "examples/onnx.md",
    "examples/generate/README.md": "examples/generate.md",
}
CHARTS = "benchmarks/charts"
_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")
# What tests/doc_snippets.py reads before a code block: for the test suite, not the reader.
_TEST_MARK = re.compile(r"^ *<!-- (docs-test|example): .*? -->\n", re.M)


def cli_reference() -> str:
    """`blaze` and every subcommand, as typer documents them from the click command tree."""
    from blazerpc.cli import cli

    command = typer.main.get_command(cli)
    body = get_docs_for_click(obj=command, ctx=click.Context(command), name="blaze")
    intro = (
        "Every command and option of `blaze`, generated from the command itself when the site "
        "is built (the same text as `blaze COMMAND --help`).\n\n"
    )
    return body.replace("# `blaze`\n", "# CLI reference\n\n" + intro, 1)


def _page_text(repo_path: str) -> str:
    text = (ROOT / repo_path).read_text()
    if repo_path == "LICENSE":
        return "# License\n\n" + text
    return text


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for repo_path, page in PAGES.items():
        files.append(File.generated(config, page, content=_page_text(repo_path)))
    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    for chart in sorted((ROOT / CHARTS).glob("*.svg")):
        files.append(File.generated(config, f"charts/{chart.name}", abs_src_path=str(chart)))
    return files


def _repo_path(page: Page) -> str:
    """Where the page's Markdown lives in the repository."""
    src = page.file.src_uri
    for repo_path, site_page in PAGES.items():
        if site_page == src:
            return repo_path
    return f"docs/{src}"


def _site_target(repo_target: str) -> str | None:
    """The site page (under docs/) that the repository path `repo_target` is shown as."""
    repo_target = repo_target.rstrip("/")
    if repo_target.startswith("docs/"):
        return repo_target.removeprefix("docs/")
    if repo_target.startswith(CHARTS + "/"):
        return "charts/" + repo_target.removeprefix(CHARTS + "/")
    for repo_path, site_page in PAGES.items():
        if repo_target in (repo_path, posixpath.dirname(repo_path)):
            return site_page
    return None


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    here = posixpath.dirname(_repo_path(page))
    page_dir = posixpath.dirname(page.file.src_uri)

    def rewrite(match: re.Match[str]) -> str:
        target = match.group(2)
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            return match.group(0)
        path, _, anchor = target.partition("#")
        repo_target = posixpath.normpath(posixpath.join(here, path))
        site = _site_target(repo_target)
        if site is None and (ROOT / repo_target).is_file():
            # A source file (an example's app.py): published as it is, beside the pages.
            site = f"files/{repo_target}"
            if files.get_file_from_path(site) is None:
                files.append(File.generated(config, site, abs_src_path=str(ROOT / repo_target)))
        if site is None:
            return match.group(0)
        link = posixpath.relpath(site, page_dir or ".")
        return f"{match.group(1)}{link}{'#' + anchor if anchor else ''}{match.group(3)}"

    return _TEST_MARK.sub("", _LINK.sub(rewrite, markdown))
