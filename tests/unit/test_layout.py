"""The domain modules (state, profile, merge, timeline, identity graph, rules, resolution, features)
import no stream, broker, storage or JSON library, not even through each other: they are pure
functions over plain values, testable and reusable without a broker (README, "Layout")."""

from __future__ import annotations

import subprocess
import sys

DOMAIN = ("streams.profile", "streams.timeline", "streams.merge", "streams.dispatch", "streams.identity_graph",
          "streams.identity", "streams.possible_matches", "streams.rules.segments", "streams.rules.triggers",
          "streams.rules.guardrails", "streams.rules.payload", "streams.rules.recommend",
          "streams.rules.score_timer", "streams.resolution", "models.features")
PLUMBING = ("faust", "mode", "aiokafka", "confluent_kafka", "rocksdict", "orjson", "json", "msgspec", "lightgbm")


def test_the_domain_imports_no_plumbing() -> None:
    code = (f"import sys\nimport {', '.join(DOMAIN)}\n"
            f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(PLUMBING)!r})))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert found == [], f"the domain modules pull in {found}"
