"""Identity resolution (issue 3): exact merges through shared identifiers, fuzzy merges of identify records.

Pure and deterministic: plain data in, plain data out; the only module-level state is the shipped
model, read once from ``default_model.json`` on first use, and bounded caches of pure functions. See
:mod:`streams.domain.resolution.resolver` for the design, :mod:`.scoring` for the pair score, :mod:`.compare`
for the comparison levels, :mod:`.model` for the Fellegi-Sunter model and its EM fit,
:mod:`.normalize` for the canonical forms of traits and :mod:`.blocks` for the stream's per-block fuzzy step.
"""

from streams.domain.resolution.blocks import (
    BlockOutcome,
    block_keys,
    drop_member,
    linkable_pairs,
    on_block_message,
    person_from_record,
    person_record,
)
from streams.domain.resolution.model import Model, default_model, fit_model
from streams.domain.resolution.resolver import (
    MAX_BLOCK,
    MERGE_THRESHOLD,
    POSSIBLE_THRESHOLD,
    BatchResult,
    Resolution,
    Resolver,
    blocking_keys,
    candidate_pairs,
    identifier_keys,
    representative,
    resolve_all,
    resolve_batch,
)
from streams.domain.resolution.scoring import Person, evidence, person_of, score

__all__ = [
    "MAX_BLOCK",
    "MERGE_THRESHOLD",
    "POSSIBLE_THRESHOLD",
    "BatchResult",
    "BlockOutcome",
    "Model",
    "Person",
    "Resolution",
    "Resolver",
    "block_keys",
    "blocking_keys",
    "candidate_pairs",
    "default_model",
    "drop_member",
    "evidence",
    "fit_model",
    "identifier_keys",
    "linkable_pairs",
    "on_block_message",
    "person_from_record",
    "person_of",
    "person_record",
    "representative",
    "resolve_all",
    "resolve_batch",
    "score",
]
