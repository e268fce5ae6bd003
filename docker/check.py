"""Static checks of the Dockerfiles, for machines where `docker build` cannot run.

What a build would catch first and this checks without Docker: every COPY source exists in the
build context (the repo root) and is not dropped by .dockerignore; the base image has a pinned,
non-`latest` tag; the torch of a pytorch/pytorch base tag and the DeepSpeed pin satisfy
pyproject.toml; MEMSWEEP_IMAGE is set (the cell record reads it); the cluster image installs
SLURM's client tools; the test image copies every top-level path the tests open.
Not checked: that the tag exists on the registry, that apt and pip succeed, that CUDA works.

    python docker/check.py          # prints the problems, exits 1 if there are any
"""

from __future__ import annotations

import fnmatch
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = ("docker/Dockerfile.cpu", "docker/Dockerfile.cuda")


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pattern in patterns:
        pattern = pattern.rstrip("/").removeprefix("**/")
        if fnmatch.fnmatch(rel, pattern) or any(fnmatch.fnmatch(p, pattern) for p in parts):
            return True
    return False


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *[r for extra in project["optional-dependencies"].values() for r in extra]]
    return {Requirement(r).name: Requirement(r) for r in reqs}


def check_dockerfile(rel_path: str) -> list[str]:
    path = ROOT / rel_path
    if not path.exists():
        return [f"{rel_path}: missing"]
    problems: list[str] = []
    ignore = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
              if p.strip() and not p.startswith("#")] if (ROOT / ".dockerignore").exists() else []
    instructions = _instructions(path)
    args = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value.strip('"')
    expand = lambda s: re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), s)  # noqa: E731
    copied: set[str] = set()
    for word, rest in instructions:
        if word == "FROM":
            image = expand(rest.split()[0])
            tag = image.rpartition(":")[2] if ":" in image else ""
            if not tag or tag == "latest" or not re.search(r"\d", tag):
                problems.append(f"{rel_path}: base image {image!r} is not pinned to a version tag")
            torch_version = re.match(r"pytorch/pytorch:(\d+\.\d+\.\d+)", image)
            torch_req = _requirements().get("torch")
            if torch_version and torch_req and Version(torch_version.group(1)) not in torch_req.specifier:
                problems.append(f"{rel_path}: base torch {torch_version.group(1)} does not satisfy {torch_req}")
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _dest = [s for s in rest.split() if not s.startswith("--")]
            for source in sources:
                copied.add(source.rstrip("/"))
                if not (ROOT / source).exists():
                    problems.append(f"{rel_path}: COPY source {source!r} is not in the build context")
                elif _ignored(source.rstrip("/"), ignore):
                    problems.append(f"{rel_path}: COPY source {source!r} is excluded by .dockerignore")
    body = path.read_text()
    if "MEMSWEEP_IMAGE=" not in body:
        problems.append(f"{rel_path}: does not set ENV MEMSWEEP_IMAGE (versions.container_image of every cell)")
    if "DEEPSPEED_VERSION" in args:
        ds_req = _requirements().get("deepspeed")
        if ds_req and Version(args["DEEPSPEED_VERSION"]) not in ds_req.specifier:
            problems.append(f"{rel_path}: deepspeed {args['DEEPSPEED_VERSION']} does not satisfy {ds_req}")
    if rel_path.endswith(".cuda") and "slurm-client" not in body:
        problems.append(f"{rel_path}: no slurm-client: scontrol requeue cannot work inside the container")
    if "pytest" in body:  # the test image: it must hold what the tests open relative to the repo
        needed = set(re.findall(r'parents\[1\]\s*/\s*"([^"/]+)"', "\n".join(
            p.read_text() for p in (ROOT / "tests").glob("*.py"))))
        for top in sorted(needed - copied):
            problems.append(f"{rel_path}: the tests open {top}/ but the image does not COPY it")
    return problems


def main() -> int:
    problems = [p for rel in DOCKERFILES for p in check_dockerfile(rel)]
    for problem in problems:
        print(problem)
    print("docker/check.py:", "ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
