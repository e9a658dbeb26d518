"""Scoring: the predictions of one profile in the stream (:class:`Predictor`, called by the timeline's
``score`` timer) and of every profile of a history (``mailpulse score``), with the same features."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from models.bundle import ModelBundle, ModelError
from models.features import feature_row
from schemas.timeparse import format_ms
from streams.domain.config import Identity, Limits, PipelineConfig
from streams.domain.dispatch import LocalPipeline
from streams.domain.profile import cart_view
from streams.domain.state import Predictions
from streams.domain.timeline import RuleSet
from streams.ingest import DEFAULT_POLICY, IngestPolicy
from streams.tools.history import HistoryError, read_events
from streams.tools.output_file import write_lines

#: Retention of event ids for dedupe in offline runs (the stream's default).
RETENTION_MS = 7 * 86_400_000


def predictions(purchase_probability: float, version: str, at: int) -> Predictions:
    """A profile's ``predictions`` (and the body of a ``scores`` message).  Rounded to 4 places, the
    churn probability being exactly 1 minus the purchase probability."""
    purchase = round(purchase_probability, 4)
    return {"churn_probability": round(1.0 - purchase, 4), "purchase_probability": purchase,
            "model_version": version, "at": format_ms(at)}


class Predictor:
    """``predictor(profile, cart, at)`` -> predictions: the timeline's scorer.  ``observe`` receives
    each call's model time in seconds (``mailpulse_scoring_seconds``)."""

    def __init__(self, bundle: ModelBundle, observe: Callable[[float], None] | None = None) -> None:
        self.bundle = bundle
        self.version = bundle.version
        self._observe = observe

    def __call__(self, profile: Mapping[str, Any], cart: dict[str, Any] | None, at: int) -> Predictions:
        row = feature_row(profile, cart, at)
        started = time.perf_counter()
        probability = self.bundle.purchase_probabilities([row])[0]
        if self._observe is not None:
            self._observe(time.perf_counter() - started)
        return predictions(probability, self.version, at)


class ScoreError(ValueError):
    """``score`` cannot run (bad history, models or output path); one line for the user."""


@dataclass(frozen=True, slots=True)
class ScoreStats:
    events: int
    profiles: int
    model_version: str
    seconds: float
    model_as_of: str = ""  # the model's training cut (its manifest's ``as_of``)


@dataclass(frozen=True, slots=True)
class StreamRules:
    """What the stream's settings decide about how a history folds into profiles (``train``, ``score``
    and ``resolve`` read them as ``run`` does): ``identity`` (``MAILPULSE_CONFIG``'s blocked values and
    identity limits), the ingest's ``policy`` (its phone region and blocked values), the dedupe
    ``retention_ms`` and the config's ``limits``."""

    identity: Identity = field(default_factory=Identity)
    policy: IngestPolicy = DEFAULT_POLICY
    retention_ms: int = RETENTION_MS
    limits: Limits = field(default_factory=Limits)  # (the bounds of a profile's collections: seen ids, history)


#: The built-in defaults (what a worker without settings or config file does).
DEFAULT_RULES = StreamRules()


def offline_pipeline(rules: StreamRules = DEFAULT_RULES) -> LocalPipeline:
    """The profile hop without a broker and without what the features do not read (``train``,
    ``score``): no scorer, no segments, every trigger off.  Profiles fold, merge and close their carts
    exactly as in the stream (segments and triggers only write ``segments`` and the rule state)."""
    config = PipelineConfig.model_validate(
        {"triggers": {name: {"enabled": False} for name in PipelineConfig().triggers.model_dump()},
         "scoring": {"enabled": False}, "identity": rules.identity.model_dump(), "limits": rules.limits.model_dump()})
    return LocalPipeline(RuleSet(config, (), {}, rules.retention_ms))


def profiles_at(events: list[dict[str, Any]], as_of: int, rules: StreamRules = DEFAULT_RULES) -> LocalPipeline:
    """The profiles of a history at ``as_of``: the events up to it folded as the stream folds them."""
    local = offline_pipeline(rules)
    # in time order, as a live stream mostly delivers them (each profile's parked events stay few)
    local.feed(sorted((event for event in events if event["ts"] <= as_of), key=lambda event: event["ts"]))
    local.advance(as_of)
    return local


def person_after(local: LocalPipeline, key: str, cut: int) -> str | None:
    """The key of the live profile that the person of ``key`` (a live profile's key at ``cut``) is in
    now, or None when an erase after ``cut`` took that person away: the contract's erase leaves no
    later output or derived record of them.  An erased key keeps the erase's time (``erased_at``),
    also when its identifier comes back later as a new person's, so that one does not count."""
    state = local.states.get(key)
    erased_at = state.get("erased_at") if state is not None else None
    if isinstance(erased_at, int) and erased_at > cut:
        return None
    return local.root_of(key)


def erased_later(local: LocalPipeline, later: list[dict[str, Any]], as_of: int) -> set[str]:
    """The profile ids of ``local``'s live profiles (the history folded up to ``as_of``) whose person
    an erase among ``later`` (the events after ``as_of``) erases (:func:`person_after`): ``score``
    writes its lines after that erase.  The later events are folded in time order, identity merges
    after ``as_of`` included; ``local`` moves on past ``as_of``."""
    if not any(event["type"] == "erase" for event in later):
        return set()
    keys = {key: state["profile"]["profile_id"] for key, state in local.live()}
    local.feed(sorted(later, key=lambda event: event["ts"]))
    return {profile_id for key, profile_id in keys.items() if person_after(local, key, as_of) is None}


def score_profiles(local: LocalPipeline, as_of: int, bundle: ModelBundle) -> list[dict[str, Any]]:
    """One ``{"user_id", "profile_id", "churn_probability", "purchase_probability", "model_version"}``
    per live profile, by profile id."""
    people = sorted(((state["profile"]["profile_id"], state["profile"]) for _, state in local.live()),
                    key=lambda item: item[0])
    rows = [feature_row(profile, cart_view(profile), as_of) for _, profile in people]
    lines = []
    for (profile_id, profile), probability in zip(people, bundle.purchase_probabilities(rows), strict=True):
        scored = predictions(probability, bundle.version, as_of)
        lines.append({"user_id": profile["user_id"], "profile_id": profile_id,
                      "churn_probability": scored["churn_probability"],
                      "purchase_probability": scored["purchase_probability"], "model_version": bundle.version})
    return lines


def score_file(events_path: Path, as_of: int, models_dir: Path, out: Path, show_progress: bool = False,
               jobs: int = 1, rules: StreamRules = DEFAULT_RULES) -> ScoreStats:
    """``mailpulse score``: writes one JSON line per profile of the history at ``as_of`` to ``out``."""
    started = time.monotonic()
    try:
        bundle = ModelBundle.load(models_dir)
        # all of it: an erase after as-of still takes its person out (:func:`erased_later`)
        events = read_events(events_path, show_progress=show_progress, label="score: reading", jobs=jobs,
                             policy=rules.policy)
    except (ModelError, HistoryError) as exc:
        raise ScoreError(str(exc)) from None
    local = profiles_at(events, as_of, rules)
    lines = score_profiles(local, as_of, bundle)
    gone = erased_later(local, [event for event in events if event["ts"] > as_of], as_of)
    lines = [line for line in lines if line["profile_id"] not in gone]
    try:
        write_lines(out, (orjson.dumps(line) + b"\n" for line in lines))
    except OSError as exc:
        raise ScoreError(f"cannot write {out}: {exc.strerror}") from None
    used = sum(event["ts"] <= as_of for event in events)
    return ScoreStats(used, len(lines), bundle.version, time.monotonic() - started, bundle.as_of)
