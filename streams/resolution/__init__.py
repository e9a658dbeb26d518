"""Identity resolution (issue 3): exact merges through shared identifiers, fuzzy merges of identify records.

Pure and deterministic: plain data in, plain data out, no module-level state. See
:mod:`streams.resolution.resolver` for the design, :mod:`.scoring` for the pair score and
:mod:`.normalize` for the canonical forms of traits.
"""

from streams.resolution.resolver import (
    MAX_BLOCK,
    MERGE_THRESHOLD,
    POSSIBLE_THRESHOLD,
    BatchResult,
    Resolution,
    Resolver,
    blocking_keys,
    identifier_keys,
    representative,
    resolve_all,
    resolve_batch,
)
from streams.resolution.scoring import Person, evidence, person_of, score

__all__ = [
    "MAX_BLOCK",
    "MERGE_THRESHOLD",
    "POSSIBLE_THRESHOLD",
    "BatchResult",
    "Person",
    "Resolution",
    "Resolver",
    "blocking_keys",
    "evidence",
    "identifier_keys",
    "person_of",
    "representative",
    "resolve_all",
    "resolve_batch",
    "score",
]
