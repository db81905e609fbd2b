"""The container image's build steps, proven without a Docker engine.

The Dockerfile's builder stage is replayed on exactly the files its COPY lines take from the
build context (minus .dockerignore): the same files in a scratch directory, the same RUN
command with its cache mounts dropped. If Cargo needs a file the image does not copy (an
example, a bench, a workspace member), this fails as `docker build` would. The runtime stage's
COPY sources must exist in the context too, and the binary built must accept the image's
policies as its CMD names them.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
# The builder's target directory lives here between runs, so a rerun builds incrementally.
BUILD_CACHE = REPO_ROOT / "target" / "image-build"
BUILD_TIMEOUT_S = 1800


@dataclass
class Stage:
    base: str
    name: str | None
    workdir: str = "/"
    copies: list[tuple[list[str], str, bool]] = field(default_factory=list)  # (sources, destination, from another stage)
    runs: list[str] = field(default_factory=list)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, found = "", []
    for line in text.splitlines():
        if line.strip().startswith("#") and not joined:
            continue
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        joined += line
        if joined.strip():
            keyword, _, arguments = joined.strip().partition(" ")
            found.append((keyword.upper(), arguments.strip()))
        joined = ""
    return found


def stages(text: str) -> list[Stage]:
    found: list[Stage] = []
    for keyword, arguments in instructions(text):
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(words[0], name))
        elif keyword == "WORKDIR":
            found[-1].workdir = arguments
        elif keyword == "COPY":
            words = shlex.split(arguments)
            from_stage = any(word.startswith("--from=") for word in words)
            paths = [word for word in words if not word.startswith("--")]
            found[-1].copies.append((paths[:-1], paths[-1], from_stage))
        elif keyword == "RUN":
            found[-1].runs.append(arguments)
    return found


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `relative` out of the build context."""
    return any(fnmatch.fnmatch(relative, pattern.rstrip("/")) or fnmatch.fnmatch(relative, pattern.rstrip("/") + "/*") or
               fnmatch.fnmatch(relative, pattern.rstrip("/").removeprefix("**/")) for pattern in patterns)


def dockerignore() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def copy_into(source: Path, destination: Path, patterns: list[str]) -> None:
    """Copies a file or a tree of the context, leaving out what .dockerignore names."""
    if source.is_file():
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
        return
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(REPO_ROOT).as_posix()
        if path.is_file() and not ignored(relative, patterns):
            target = destination / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def without_mounts(command: str) -> str:
    return re.sub(r"--mount=\S+\s*", "", command)


@pytest.fixture(scope="module")
def dockerfile_stages() -> list[Stage]:
    return stages(DOCKERFILE.read_text())


def test_every_copy_source_is_in_the_build_context(dockerfile_stages):
    patterns = dockerignore()
    for stage in dockerfile_stages:
        for sources, _, from_stage in stage.copies:
            if from_stage:
                continue
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the build context"
                assert not ignored(source, patterns), f"COPY {source}: left out by .dockerignore"


@pytest.mark.timeout(BUILD_TIMEOUT_S + 60)
def test_the_builder_stage_builds_from_exactly_the_files_it_copies(dockerfile_stages, tmp_path):
    (builder,) = [stage for stage in dockerfile_stages if stage.name == "builder"]
    assert builder.workdir.startswith("/"), builder.workdir
    context = tmp_path / "src"
    context.mkdir()
    patterns = dockerignore()
    for sources, destination, from_stage in builder.copies:
        assert not from_stage
        for source in sources:
            target = context / destination / Path(source).name if destination.endswith("/") or len(sources) > 1 else context / destination
            copy_into(REPO_ROOT / source, target, patterns)
    BUILD_CACHE.mkdir(parents=True, exist_ok=True)
    (context / "target").symlink_to(BUILD_CACHE, target_is_directory=True)
    out = tmp_path / "out"
    environment = {name: value for name, value in os.environ.items() if name != "CARGO_TARGET_DIR"}
    for command in builder.runs:
        script = without_mounts(command).replace("/out/", f"{out}/")
        result = subprocess.run(["sh", "-ec", script], cwd=context, env=environment, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
        assert result.returncode == 0, f"RUN {script}\n{result.stderr[-4000:]}"
    built = out / "portcullis"
    assert built.is_file()
    # The image's CMD serves /etc/portcullis/policies, which the runtime stage copies from policies/.
    (runtime,) = [stage for stage in dockerfile_stages if stage.name is None]
    (policies,) = [sources for sources, destination, _ in runtime.copies if destination == "/etc/portcullis/policies"]
    result = subprocess.run([str(built), "validate", "--policies", *(str(REPO_ROOT / source) for source in policies)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
