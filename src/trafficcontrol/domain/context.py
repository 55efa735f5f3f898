"""Context budgets: keep a model conversation small on purpose. Pure.

Design note. Past about half of a model's window, long contexts degrade (the model
forgets and invents) and every turn costs more. A ``ContextBudget`` tracks what a
conversation holds — entries by category (system, task specs, results, decisions,
history), each with its token count and whether it may be compressed — against the
window, with thresholds as fractions of it (defaults from the roadmap):

- ``compress`` (40%): completed work (compressible entries, oldest first) is replaced
  by one summary entry that keeps the originals' ids, so details can be fetched back;
  once started it frees down to ``compress_to`` (30%), so summaries are few and large;
- ``delegate`` (45%): new analysis must go to a sub-agent with a fresh context and only
  the handoff it needs (``must_delegate``);
- ``warn`` (50%): a warning, once per crossing;
- ``cap`` (60%): never exceeded. An entry that would push the context past the cap even
  after compression is refused (``Refused``): the caller delegates it instead.

Token counts are estimated offline (characters per token) and the estimator is
calibrated against what the provider reports: ``Estimator.observe(estimated, reported)``
moves the characters-per-token ratio towards the observed one (EWMA) and tracks the
relative error, which ``tc`` shows. Summaries are made by a ``Summarizer`` the caller
passes (a cheap model when one is available); ``extractive_summary`` is the
deterministic fallback: the first sentence of each entry, with its id.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from enum import StrEnum

import msgspec


class Category(StrEnum):
    SYSTEM = "system"
    TASK_SPECS = "task_specs"
    RESULTS = "results"
    DECISIONS = "decisions"
    HISTORY = "history"


class Thresholds(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    compress_to: float = 0.30
    """Compression, once started, frees down to this (fewer, larger summaries)."""
    compress: float = 0.40
    delegate: float = 0.45
    warn: float = 0.50
    cap: float = 0.60

    def __post_init__(self) -> None:
        ordered = self.compress_to <= self.compress <= self.delegate <= self.warn <= self.cap
        if not (self.compress_to > 0 and ordered and self.cap <= 1):
            raise ValueError(
                "context thresholds must satisfy"
                " 0 < compress_to <= compress <= delegate <= warn <= cap <= 1"
            )


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    category: Category
    text: str
    tokens: int
    compressible: bool = True
    summary_of: tuple[str, ...] = ()
    """For a summary: the ids of the entries it replaced."""


class Estimator(msgspec.Struct, kw_only=True):
    """Characters per token, calibrated against the provider's reported counts."""

    chars_per_token: float = 4.0
    alpha: float = 0.3
    error: float | None = None
    """EWMA of |estimated - reported| / reported; None before any report."""
    samples: int = 0

    def estimate(self, text: str) -> int:
        return max(1, math.ceil(len(text) / self.chars_per_token))

    def observe(self, chars: int, reported_tokens: int) -> None:
        """The provider counted ``reported_tokens`` for ``chars`` characters."""
        if reported_tokens <= 0 or chars <= 0:
            return
        estimated = chars / self.chars_per_token
        miss = abs(estimated - reported_tokens) / reported_tokens
        self.error = (
            miss if self.error is None else (1 - self.alpha) * self.error + self.alpha * miss
        )
        observed = chars / reported_tokens
        self.chars_per_token = (1 - self.alpha) * self.chars_per_token + self.alpha * observed
        self.samples += 1


class Compressed(msgspec.Struct, frozen=True, kw_only=True):
    summary_id: str
    replaced: tuple[str, ...]
    saved_tokens: int


class Warned(msgspec.Struct, frozen=True, kw_only=True):
    utilisation: float


class Refused(msgspec.Struct, frozen=True, kw_only=True):
    entry_id: str
    tokens: int
    reason: str


Action = Compressed | Warned | Refused
Summarizer = Callable[[Sequence[Entry]], str]


def extractive_summary(entries: Sequence[Entry]) -> str:
    """First sentence of each entry (at most 160 characters), prefixed by its id."""
    lines = []
    for entry in entries:
        text = " ".join(entry.text.split())
        cut = min((i for i in (text.find(". "), text.find("\n")) if i >= 0), default=len(text))
        lines.append(f"[{entry.id}] {text[: min(cut + 1, 160)]}")
    return "\n".join(lines)


class ContextBudget:
    """One conversation's entries against its window (see the module docstring)."""

    def __init__(
        self,
        window_tokens: int,
        thresholds: Thresholds | None = None,
        estimator: Estimator | None = None,
        summarizer: Summarizer = extractive_summary,
    ) -> None:
        if window_tokens <= 0:
            raise ValueError("window_tokens must be > 0")
        self.window = window_tokens
        self.thresholds = thresholds or Thresholds()
        self.estimator = estimator or Estimator()
        self.summarizer = summarizer
        self.entries: dict[str, Entry] = {}
        self.archive: dict[str, Entry] = {}
        """Compressed originals by id (fetched back on demand; not in the context)."""
        self._used = 0
        self._warned = False
        self._summaries = 0
        self.peak = 0.0
        self.compressions = 0
        self.refusals = 0

    @property
    def used(self) -> int:
        return self._used

    def utilisation(self) -> float:
        return self._used / self.window

    def must_delegate(self) -> bool:
        """New analysis goes to a sub-agent: the context is past the delegate threshold."""
        return self.utilisation() >= self.thresholds.delegate

    def add(
        self, entry_id: str, category: Category, text: str, *, compressible: bool = True
    ) -> list[Action]:
        """Add an entry; compress, warn or refuse as the thresholds say."""
        tokens = self.estimator.estimate(text)
        entry = Entry(
            id=entry_id, category=category, text=text, tokens=tokens, compressible=compressible
        )
        actions: list[Action] = []
        cap = self.thresholds.cap * self.window
        if self._used + tokens > cap:
            actions.extend(self._compress(self._used + tokens - cap))
        if self._used + tokens > cap:
            self.refusals += 1
            actions.append(
                Refused(
                    entry_id=entry_id,
                    tokens=tokens,
                    reason=f"would take the context past {self.thresholds.cap:.0%} of its window",
                )
            )
            return actions
        self.entries[entry_id] = entry
        self._used += tokens
        if self.utilisation() > self.thresholds.compress:
            excess = self._used - self.thresholds.compress_to * self.window
            actions.extend(self._compress(excess))
        self.peak = max(self.peak, self.utilisation())
        if self.utilisation() >= self.thresholds.warn:
            if not self._warned:
                self._warned = True
                actions.append(Warned(utilisation=self.utilisation()))
        else:
            self._warned = False
        return actions

    def fetch(self, entry_id: str) -> Entry | None:
        """An entry's full text, also when compressed away (not added back)."""
        return self.entries.get(entry_id) or self.archive.get(entry_id)

    def by_category(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for entry in self.entries.values():
            out[entry.category.value] = out.get(entry.category.value, 0) + entry.tokens
        return out

    def _compress(self, needed: float) -> list[Action]:
        """Summarise the oldest compressible entries until ``needed`` tokens are freed."""
        chosen: list[Entry] = []
        freed = 0
        for entry in self.entries.values():
            if freed >= needed:
                break
            if entry.compressible and not entry.summary_of:
                chosen.append(entry)
                freed += entry.tokens
        if len(chosen) < 2 and not (chosen and chosen[0].tokens > 64):
            return []  # nothing worth summarising
        text = self.summarizer(chosen)
        self._summaries += 1
        summary = Entry(
            id=f"summary-{self._summaries}",
            category=Category.HISTORY,
            text=text,
            tokens=self.estimator.estimate(text),
            compressible=False,
            summary_of=tuple(e.id for e in chosen),
        )
        saved = sum(e.tokens for e in chosen) - summary.tokens
        if saved <= 0:
            return []
        for entry in chosen:
            del self.entries[entry.id]
            self.archive[entry.id] = entry
        self.entries[summary.id] = summary
        self._used -= saved
        self.compressions += 1
        return [Compressed(summary_id=summary.id, replaced=summary.summary_of, saved_tokens=saved)]
