"""The prompt policy: deny rules by category from a TOML file, matched on normalised words.

Normalisation folds case and accents (NFKD, combining marks dropped), turns every non-alphanumeric
run into one space and joins runs of single letters ("w e a p o n", "w.e.a.p.o.n" -> "weapon").
Words match whole words only (plus a plural s/es), so "Scunthorpe" does not match a listed
substring; phrases match consecutive words; regular expressions see the normalised text. Allowed
phrases and words are removed before matching.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from sfumato.errors import InvalidRequest, PromptBlocked

DEFAULT_POLICY = Path(__file__).with_name("default_policy.toml")


ONE_LETTER_WORDS = ("a", "i")


def normalise(text: str, split_articles: bool = False) -> str:
    """Lower case, no accents, single spaces, single letters joined into words.

    With `split_articles`, a leading or trailing "a"/"i" of a joined run stays a word of its own
    ("a N.U.D.E statue" -> "a nude statue" rather than "anude statue").
    """
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    tokens = re.sub(r"[\W_]+", " ", plain).split()
    out: list[str] = []
    run: list[str] = []
    for token in tokens + [""]:
        if len(token) == 1 and token.isalpha():
            run.append(token)
            continue
        if run:
            head = [run.pop(0)] if split_articles and len(run) > 2 and run[0] in ONE_LETTER_WORDS else []
            tail = [run.pop()] if split_articles and len(run) > 2 and run[-1] in ONE_LETTER_WORDS else []
            out += head + ["".join(run)] + tail
            run = []
        if token:
            out.append(token)
    return " ".join(out)


def _word_pattern(word: str) -> str:
    return rf"(?<!\w){re.escape(normalise(word))}(?:s|es)?(?!\w)"


def _phrase_pattern(phrase: str) -> str:
    return rf"(?<!\w){re.escape(normalise(phrase))}(?!\w)"


@dataclass
class Category:
    name: str
    patterns: list[re.Pattern]


@dataclass
class PromptPolicy:
    categories: list[Category]
    allow: list[re.Pattern] = field(default_factory=list)
    audit_log: Path | None = None
    log_allowed: bool = False

    @classmethod
    def load(cls, path: str | Path | None = None) -> PromptPolicy:
        """Load a policy TOML (the packaged default when `path` is None)."""
        path = Path(path) if path else DEFAULT_POLICY
        if not path.is_file():
            raise InvalidRequest(f"safety policy {path} does not exist")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise InvalidRequest(f"safety policy {path}: {exc}") from None
        categories = []
        for name, rules in data.get("categories", {}).items():
            unknown = set(rules) - {"words", "phrases", "regex"}
            if unknown:
                raise InvalidRequest(f"safety policy {path}: category {name} has unknown keys {sorted(unknown)}")
            patterns = [_word_pattern(w) for w in rules.get("words", [])]
            patterns += [_phrase_pattern(p) for p in rules.get("phrases", [])]
            patterns += list(rules.get("regex", []))
            try:
                categories.append(Category(name, [re.compile(p) for p in patterns]))
            except re.error as exc:
                raise InvalidRequest(f"safety policy {path}: category {name}: bad regex ({exc})") from None
        allow = data.get("allow", {})
        allowed = [re.compile(_phrase_pattern(p)) for p in allow.get("phrases", [])]
        allowed += [re.compile(_word_pattern(w)) for w in allow.get("words", [])]
        settings = data.get("settings", {})
        log = settings.get("audit_log") or None
        return cls(categories, allowed, Path(log).expanduser() if log else None, bool(settings.get("log_allowed")))

    def category_of(self, prompt: str) -> str | None:
        """The first category whose rules match the prompt, or None."""
        variants = []
        for split in (False, True):
            text = normalise(prompt, split)
            for pattern in self.allow:
                text = pattern.sub(" ", text)
            variants.append(" ".join(text.split()))
        for category in self.categories:
            if any(p.search(text) for p in category.patterns for text in variants):
                return category.name
        return None

    def check(self, prompt: str) -> None:
        """Raise `PromptBlocked` naming the category (never the rule) when the prompt is denied."""
        self.check_texts([prompt])

    def check_texts(self, texts: list[str]) -> None:
        """Every text that conditions one request (prompt, directions, p2p source, expanded prompts...): the first
        denied one raises `PromptBlocked`; one audit record for the request."""
        category = next((c for c in map(self.category_of, dict.fromkeys(texts)) if c), None)
        if self.audit_log and (category or self.log_allowed):
            self._audit("\n".join(texts), category)
        if category:
            raise PromptBlocked(f"prompt blocked by the safety policy (category: {category})")

    def _audit(self, prompt: str, category: str | None) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "decision": "block" if category else
                  "allow", "category": category, "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest()}
        self.audit_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.audit_log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
