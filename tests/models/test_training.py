"""models.training and ``mailpulse train``: examples cut from a history, labels after identity merges,
a deterministic model and its report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from models.bundle import MANIFEST, ModelBundle
from models.features import FEATURES
from models.training import DAY_MS, build_examples, component_shards, cutoffs
from streams.cli import main
from streams.ingest import Accepted, Source, decode
from streams.tools.generate import BTYD_PARAMS
from streams.tools.history import read_events
from tests.models.conftest import AS_OF, BTYD_AS_OF
from tests.unit.test_timeline import T0, ev, ms


def anonymous(event_id: str, etype: str, at: int, anonymous_id: str, **extra: Any) -> dict[str, Any]:
    raw = {"event_id": event_id, "type": etype, "timestamp": at, "anonymous_id": anonymous_id, **extra}
    result = decode(orjson.dumps(raw), Source("t", 0, 0, None, 0), 0)
    assert isinstance(result, Accepted), result
    return result.event


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cutoffs_step_back_one_horizon_at_a_time_and_keep_a_day_of_history() -> None:
    assert cutoffs(0, 100 * DAY_MS, 30 * DAY_MS) == [10 * DAY_MS, 40 * DAY_MS, 70 * DAY_MS]
    assert cutoffs(0, 100 * DAY_MS, 10 * DAY_MS, most=2) == [80 * DAY_MS, 90 * DAY_MS]
    assert cutoffs(0, 30 * DAY_MS, 30 * DAY_MS) == []


@pytest.mark.parametrize("jobs", [1, 3])
def test_labels_are_purchases_in_the_horizon_after_the_cut_also_through_a_later_merge(jobs: int) -> None:
    t = ms(T0)
    day = DAY_MS
    events = [
        ev("a-1", "product_view", t, user="u-a", product_id="x"),
        ev("a-2", "purchase", t + 12 * day, user="u-a", order_id="oa", total=5.0),  # in (10, 20]: 1
        ev("b-1", "product_view", t, user="u-b", product_id="x"),
        ev("b-2", "purchase", t + 5 * day, user="u-b", order_id="ob", total=5.0),  # before the cut: 0
        anonymous("c-1", "product_view", t + day, "anon-c", product_id="x"),
        # anon-c becomes u-c after the cut; u-c buys: the anonymous profile at the cut is labelled 1
        ev("c-2", "identify", t + 15 * day, user="u-c", anonymous_id="anon-c"),
        ev("c-3", "purchase", t + 16 * day, user="u-c", order_id="oc", total=5.0),
    ]
    examples = build_examples(events, t + 20 * day, 10 * day, [t + 10 * day], jobs)
    assert len(examples.rows) == 3 and all(len(row) == len(FEATURES) for row in examples.rows)
    by_orders = sorted(zip((row[FEATURES.index("orders")] for row in examples.rows), examples.labels, strict=True))
    # two profiles without an order at the cut (a: 1, c: 1), b with one order (0)
    assert by_orders == [(0.0, 1), (0.0, 1), (1.0, 0)]
    assert len(set(examples.people)) == 3


def test_train_writes_a_versioned_model_and_prints_its_metrics_last(capsys: pytest.CaptureFixture[str],
                                                                    history: Path, tmp_path: Path) -> None:
    code, out, err = run(capsys, "train", "--events", str(history), "--as-of", AS_OF, "--horizon-days", "30",
                         "--out", str(tmp_path / "m"))
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    version = report["model_version"]
    assert version.startswith("20260410-")
    assert report["horizon_days"] == 30 and len(report["cutoffs"]) == 3
    assert report["examples"]["train"] > 500 and report["examples"]["validation"] > 100
    assert report["examples"]["test"] > 100 and report["split"]["kind"] == "time"
    test = report["test"]["all"]
    assert test["model"]["roc_auc"] > 0.65  # far better than chance on the generator's people
    assert test["model"]["log_loss"] < test["base_rate_log_loss"]
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    assert manifest["version"] == version and manifest["features"] == list(FEATURES)
    assert manifest["calibration"]["method"] == "isotonic"
    assert json.loads((tmp_path / "m" / manifest["files"]["metrics"]).read_text()) == report | {
        "seconds": json.loads((tmp_path / "m" / manifest["files"]["metrics"]).read_text())["seconds"]}
    assert ModelBundle.load(tmp_path / "m").version == version
    # the same history and arguments: the same model
    code, out, err = run(capsys, "train", "--events", str(history), "--as-of", AS_OF, "--horizon-days", "30",
                         "--out", str(tmp_path / "again"))
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["model_version"] == version
    assert (tmp_path / "m" / manifest["files"]["purchase"]).read_bytes() == \
        (tmp_path / "again" / manifest["files"]["purchase"]).read_bytes()


def test_train_only_reads_events_up_to_as_of(capsys: pytest.CaptureFixture[str], history: Path,
                                              tmp_path: Path) -> None:
    # the history with its events after as-of, plus purchases of strangers after it; and without:
    # the model must be the same
    lines = history.read_bytes().splitlines(keepends=True)
    cut = ms(AS_OF + "T00:00:00Z")
    kept = [line for line in lines if ms(json.loads(line)["timestamp"]) <= cut]
    assert len(kept) < len(lines)
    extra = [json.dumps({"event_id": f"x-{n}", "type": "purchase", "timestamp": cut + 1000 + n,
                         "user_id": f"nobody-{n}", "order_id": f"x-{n}", "total": 1.0}).encode() + b"\n"
             for n in range(50)]
    (tmp_path / "more.jsonl").write_bytes(b"".join(lines + extra))
    (tmp_path / "less.jsonl").write_bytes(b"".join(kept))
    versions = []
    for name in ("more", "less"):
        code, out, _ = run(capsys, "train", "--events", str(tmp_path / f"{name}.jsonl"), "--as-of", AS_OF,
                           "--horizon-days", "30", "--out", str(tmp_path / name))
        assert code == 0
        versions.append(json.loads(out.strip().splitlines()[-1])["model_version"])
    assert versions[0] == versions[1]


@pytest.mark.parametrize(("content", "fragment"), [
    (b'{"event_id": "e", "type": "page_view", "timestamp": "2026-03-01T00:00:00Z", "user_id": "u"}\n',
     "too short for a 30-day horizon"),
    (b'{"event_id": "e", "type": "page_view", "timestamp": "2026-03-01T00:00:00Z", "user_id": "u"}\nnot json\n',
     "h.jsonl:2: not JSON"),
    (b"", "no events at or before --as-of"),
])
def test_train_rejects_unusable_histories_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                      content: bytes, fragment: str) -> None:
    (tmp_path / "h.jsonl").write_bytes(content)
    code, out, err = run(capsys, "train", "--events", str(tmp_path / "h.jsonl"), "--as-of", "2026-03-10",
                         "--horizon-days", "30", "--out", str(tmp_path / "m"))
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1 and out == ""
    assert not (tmp_path / "m").exists()


def test_train_on_a_btyd_history_reports_the_model_against_bgnbd_and_the_heuristic(
        capsys: pytest.CaptureFixture[str], btyd_history: Path, tmp_path: Path) -> None:
    code, out, err = run(capsys, "train", "--events", str(btyd_history), "--as-of", BTYD_AS_OF, "--horizon-days",
                         "30", "--out", str(tmp_path / "m"))
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    directory = tmp_path / "m"
    manifest = json.loads((directory / MANIFEST).read_text())
    files = manifest["files"]
    assert set(files) == {"purchase", "metrics", "card", "roc", "calibration"}
    assert json.loads((directory / files["metrics"]).read_text())["model_version"] == report["model_version"]
    for image in ("roc", "calibration"):
        assert (directory / files[image]).read_bytes().startswith(b"\x89PNG")
    card = (directory / files["card"]).read_text()
    assert files["card"] == "MODEL_CARD.md" and report["model_version"] in card and "BG/NBD" in card
    assert "churned at time c" in card
    # every example at the test cut is a customer here (acquired with a purchase)
    test = report["test"]["all"]
    assert report["test"]["customers"]["examples"] == test["examples"] > 1000
    assert report["split"]["kind"] == "time" and len(report["cutoffs"]) == 6
    for name in ("model", "BG/NBD", "heuristic"):
        assert set(test[name]) == {"roc_auc", "pr_auc", "brier", "ece", "log_loss"}
        assert 0.5 < test[name]["roc_auc"] < 1.0
    assert test["model"]["roc_auc"] > test["heuristic"]["roc_auc"]
    assert test["model"]["pr_auc"] > test["heuristic"]["pr_auc"]
    assert test["model"]["brier"] < test["heuristic"]["brier"]
    # BG/NBD recovers about the parameters the generator draws its customers with
    bg = report["bgnbd"]
    assert bg["r"] == pytest.approx(BTYD_PARAMS["r"], rel=0.3) and bg["alpha"] == pytest.approx(BTYD_PARAMS["alpha"],
                                                                                               rel=0.3)
    # the table goes to stderr, the report stays the last line of stdout
    assert "ROC-AUC" in err and "BG/NBD" in err


def test_shards_keep_every_person_together_through_identifiers_and_fuzzy_blocks() -> None:
    t = ms(T0)
    named = {"first_name": "Anna", "last_name": "Kowalska", "birthday": "1990-04-12"}
    events = [
        anonymous("1", "product_view", t, "anon-1", product_id="x"),
        ev("2", "identify", t + 1, user="u-1", anonymous_id="anon-1"),  # anon-1 is u-1
        ev("3", "identify", t + 2, user="u-1", email="anna@example.com"),  # ... and anna@
        anonymous("4", "cart_add", t + 3, "anon-2", email="anna@example.com", product_id="x", quantity=1,
                  price=1.0),  # anon-2 through the e-mail
        ev("5", "identify", t + 4, user="u-2", traits=named),
        ev("6", "identify", t + 5, user="u-3", traits=named),  # the same person by fuzzy match: one block
        *(ev(f"o-{n}", "page_view", t + 10 + n, user=f"other-{n}") for n in range(6)),
    ]
    shards = component_shards(events, 3)
    where = {event["event_id"]: index for index, shard in enumerate(shards) for event in shard}
    assert where["1"] == where["2"] == where["3"] == where["4"]
    assert where["5"] == where["6"]
    assert len(shards) == 3 and sum(map(len, shards)) == len(events)
    assert all(shard == sorted(shard, key=events.index) for shard in shards)  # each in the original order
    assert component_shards(events, 1) == [events]


def test_examples_and_the_model_are_the_same_for_any_number_of_processes(
        capsys: pytest.CaptureFixture[str], history: Path, tmp_path: Path) -> None:
    as_of = ms(AS_OF + "T00:00:00Z")
    events = read_events(history, until=as_of)
    cuts = cutoffs(min(event["ts"] for event in events), as_of, 30 * DAY_MS)
    one, three = (build_examples(events, as_of, 30 * DAY_MS, cuts, jobs) for jobs in (1, 3))
    assert one.keys == three.keys and one.people == three.people and len(set(one.people)) > 300
    assert one.rows.tobytes() == three.rows.tobytes()
    assert one.labels.tolist() == three.labels.tolist() and one.cuts.tolist() == three.cuts.tolist()
    versions = set()
    for jobs in ("1", "2"):
        code, out, err = run(capsys, "train", "--events", str(history), "--as-of", AS_OF, "--horizon-days", "30",
                             "--out", str(tmp_path / jobs), "--jobs", jobs)
        assert code == 0, err
        versions.add(json.loads(out.strip().splitlines()[-1])["model_version"])
    assert len(versions) == 1


@pytest.mark.parametrize("jobs", [1, 3])
def test_no_example_comes_from_a_person_erased_after_its_cut_even_one_who_comes_back(jobs: int) -> None:
    # contract: an erase deletes the person with every derived record; their profile at a cut before
    # the erase is no example, and the same ids coming back after it are a new person, whose later
    # purchase must not label the erased person's past
    t = ms(T0)
    day = DAY_MS
    events = [
        ev("k-1", "product_view", t, user="u-kept", product_id="x"),
        ev("k-2", "purchase", t + 12 * day, user="u-kept", order_id="ok", total=5.0),
        ev("g-1", "product_view", t, user="u-gone", product_id="x"),
        ev("g-2", "erase", t + 11 * day, user="u-gone"),
        ev("b-1", "product_view", t, user="u-back", product_id="x"),
        ev("b-2", "erase", t + 11 * day, user="u-back"),
        ev("b-3", "purchase", t + 13 * day, user="u-back", order_id="ob", total=5.0),  # a new person
    ]
    examples = build_examples(events, t + 20 * day, 10 * day, [t + 10 * day], jobs)
    assert examples.keys == ["u:u-kept"]
    assert examples.labels.tolist() == [1]
