"""Which writing system a text is in, by Unicode character names; Morris et al. note that most of
their top memorized sequences are Japanese, Chinese or Hebrew.

This tells a script, not a language: French and English are both "Latin". Only letters count
(Unicode category L*), so digits, punctuation and spaces do not dilute the shares. Han characters
in a text that has any kana are counted as Japanese (kanji), since only Japanese mixes the two.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from functools import lru_cache

SCRIPTS = ("Latin", "Han", "Japanese", "Hangul", "Hebrew", "Arabic", "Cyrillic", "Greek", "other")
_NAME_WORDS = {
    "LATIN": "Latin",
    "CJK": "Han",
    "HIRAGANA": "Japanese",
    "KATAKANA": "Japanese",
    "HANGUL": "Hangul",
    "HEBREW": "Hebrew",
    "ARABIC": "Arabic",
    "CYRILLIC": "Cyrillic",
    "GREEK": "Greek",
}


@lru_cache(maxsize=65536)
def _letter_script(char: str) -> str | None:
    """The script of a letter, or None for anything that is not a letter."""
    if not unicodedata.category(char).startswith("L"):
        return None
    for word in unicodedata.name(char, "").replace("-", " ").split():
        if word in _NAME_WORDS:
            return _NAME_WORDS[word]
    return "other"


def script_shares(text: str) -> dict[str, float]:
    """Share of the letters of text in each script that occurs; {} when text has no letters."""
    counts = Counter(s for s in map(_letter_script, text) if s is not None)
    if counts["Japanese"] and counts["Han"]:
        counts["Japanese"] += counts.pop("Han")
    total = sum(counts.values())
    return {s: counts[s] / total for s in SCRIPTS if counts[s]}


def dominant_script(text: str) -> str:
    """The script most of text's letters are in (ties go to the earlier in SCRIPTS); "none"
    when text has no letters."""
    shares = script_shares(text)
    return max(shares, key=shares.get) if shares else "none"
