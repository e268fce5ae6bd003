"""Per-format text cleaners and readers of the built-in sources: each `read_*` turns the files a
source's patterns matched into its documents, with one cleaner per source format (Shakespeare's
markdown, pointed Hebrew, reStructuredText, tagged Brown text, the Debian handbook's HTML)."""

from __future__ import annotations

import contextlib
import html.parser
import json
import re
import sqlite3
import unicodedata
from itertools import groupby
from pathlib import Path


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
