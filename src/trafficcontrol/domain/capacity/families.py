"""Model families: the unit that plans, windows and routing reason about.

Limits are per family (Opus, Sonnet, Haiku), not per model version: a new Opus release
counts against the same Opus allowance. A name that names no known family is treated
like Sonnet, the default tier, rather than refused: an unknown model must still be
metered, and Sonnet is the middle guess.
"""

from __future__ import annotations

import functools
from enum import StrEnum


class ModelFamily(StrEnum):
    OPUS = "opus"
    SONNET = "sonnet"
    HAIKU = "haiku"


DEFAULT_FAMILY = ModelFamily.SONNET


@functools.cache
def model_family(model: str | None) -> ModelFamily:
    """The family of a model name: ``"claude-opus-4-1"`` -> opus; unknown or None -> sonnet.

    Cached: the fold asks for every usage entry, and models are few."""
    if not model:
        return DEFAULT_FAMILY
    name = model.lower()
    for family in ModelFamily:
        if family.value in name:
            return family
    return DEFAULT_FAMILY
