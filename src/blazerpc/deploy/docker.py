"""A Dockerfile that installs the app and runs `blaze serve` as a non-root user, so that
build, push and apply are three commands."""

from __future__ import annotations

import json
import sys
from importlib.metadata import version

from .spec import DeploySpec

UID = 10001  # not root, and no user of the base image; the Deployment requires runAsNonRoot

DOCKERIGNORE = """\
.git
.venv
venv
__pycache__
*.pyc
.pytest_cache
Dockerfile
.dockerignore
"""


def dockerfile(spec: DeploySpec, *, requirements: bool) -> str:
    """The Dockerfile; `requirements` says whether the build context has a requirements.txt."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = f'RUN pip install "blazerpc=={version("blazerpc")}"'
    copy_requirements = ""
    if requirements:
        copy_requirements = "COPY requirements.txt ./\n"
        install += " -r requirements.txt"
    ports = [spec.port, spec.metrics_port, *([spec.http_port] if spec.http_port else [])]
    return f"""\
# Written by `blaze deploy docker {spec.app_path}`. Build and push:
#   docker build -t IMAGE . && docker push IMAGE
FROM python:{python}-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# Dependencies first, so that a code change does not reinstall them.
{copy_requirements}{install}
COPY . .

RUN useradd --uid {UID} --no-create-home --shell /usr/sbin/nologin blaze
USER {UID}

EXPOSE {" ".join(map(str, ports))}
# The exec form: blaze is PID 1 and receives SIGTERM itself, so it drains.
ENTRYPOINT {json.dumps(spec.serve_command())}
"""
