"""``mailpulse score``: one line per profile, with the features and model the stream scores with."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pytest

from models.bundle import MANIFEST, SHIPPED_DIR, ModelBundle, ModelError
from models.scoring import Predictor, profiles_at
from schemas.timeparse import parse_timestamp
from streams.cli import main
from streams.domain.profile import cart_view
from streams.tools.history import read_events
from tests.models.conftest import AS_OF


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_score_writes_one_line_per_profile_as_the_stream_would_score_it(
        capsys: pytest.CaptureFixture[str], history: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.jsonl"
    code, _, err = run(capsys, "score", "--events", str(history), "--as-of", AS_OF, "--models", str(SHIPPED_DIR),
                       "--out", str(out))
    assert code == 0, err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    bundle = ModelBundle.load(SHIPPED_DIR)
    as_of = parse_timestamp(AS_OF + "T00:00:00Z")
    local = profiles_at(read_events(history, until=as_of), as_of)
    live = {state["profile"]["profile_id"]: state["profile"] for _, state in local.live()}
    assert [line["profile_id"] for line in lines] == sorted(live)
    assert 300 < len(lines) <= 400  # the generator's 400 people, minus the few who never showed up by as-of
    predict = Predictor(bundle)
    for line in lines:
        assert set(line) == {"user_id", "profile_id", "churn_probability", "purchase_probability", "model_version"}
        assert line["churn_probability"] + line["purchase_probability"] == pytest.approx(1.0, abs=1e-9)
        assert line["model_version"] == bundle.version
        profile = live[line["profile_id"]]
        assert line["user_id"] == profile["user_id"]
        # the stream's scorer, given the same profile at the same time, says the same
        streamed = predict(profile, cart_view(profile), as_of)
        assert (streamed["churn_probability"], streamed["purchase_probability"]) == \
            (line["churn_probability"], line["purchase_probability"])
    probabilities = [line["purchase_probability"] for line in lines]
    assert max(probabilities) - min(probabilities) > 0.5  # the model tells people apart
    assert sum(line["user_id"] is not None for line in lines) > len(lines) / 2


def test_score_refuses_a_directory_that_is_not_a_model(capsys: pytest.CaptureFixture[str], history: Path,
                                                       tmp_path: Path) -> None:
    args = ["score", "--events", str(history), "--as-of", AS_OF, "--models", str(tmp_path), "--out",
            str(tmp_path / "o.jsonl")]
    code, _, err = run(capsys, *args)
    assert code == 2 and "no manifest.json" in err and len(err.strip().splitlines()) == 1
    manifest = json.loads((SHIPPED_DIR / MANIFEST).read_text())
    manifest["features"] = manifest["features"][:-1]
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    code, _, err = run(capsys, *args)
    assert code == 2 and "trained with other features" in err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("features", [None, 5, True])
def test_a_manifest_whose_features_are_not_a_list_is_a_model_error(tmp_path: Path, features: object) -> None:
    shutil.copytree(SHIPPED_DIR, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    manifest["features"] = features  # (was a TypeError: a traceback from score, a crashed worker)
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="features"):
        ModelBundle.load(tmp_path / "m")


@pytest.mark.parametrize("name", [None, 5, "", "a\0b"])
def test_a_manifest_whose_model_file_is_not_a_file_name_is_a_model_error(tmp_path: Path, name: object) -> None:
    shutil.copytree(SHIPPED_DIR, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    manifest["files"]["purchase"] = name  # (was a TypeError or 'embedded null byte': a traceback)
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"incomplete manifest .*not a file name"):
        ModelBundle.load(tmp_path / "m")


def test_a_manifest_nested_too_deeply_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text("[" * 100_000 + "]" * 100_000)  # (was a RecursionError: a traceback)
    with pytest.raises(ModelError, match="nested too deeply"):
        ModelBundle.load(tmp_path)


def test_a_model_file_that_does_not_match_the_manifest_is_refused(tmp_path: Path) -> None:
    shutil.copytree(SHIPPED_DIR, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    del manifest["sha256"]  # as a manifest written before it kept one: the file is read for what it is
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(manifest))
    rng = np.random.default_rng(1)
    small = lightgbm.train({"objective": "binary", "verbose": -1, "num_threads": 1},
                           lightgbm.Dataset(rng.normal(size=(200, 3)), rng.integers(0, 2, 200)), num_boost_round=2)
    small.save_model(str(tmp_path / "m" / manifest["files"]["purchase"]))
    with pytest.raises(ModelError, match="takes 3 features"):
        ModelBundle.load(tmp_path / "m")
    (tmp_path / "m" / manifest["files"]["purchase"]).write_text("not a model")
    with pytest.raises(ModelError, match="not a whole LightGBM model"):
        ModelBundle.load(tmp_path / "m")


_LOAD = "from pathlib import Path; from models.bundle import ModelBundle; ModelBundle.load(Path({path!r}))"


@pytest.mark.parametrize(("damage", "kept"), [("cut short", True), ("cut short", False), ("a digit changed", True),
                                              ("a digit changed", False), ("a number damaged", True),
                                              ("a number damaged", False)])
def test_a_damaged_model_file_is_a_one_line_error_not_a_crash(tmp_path: Path, damage: str, kept: bool) -> None:
    """LightGBM's parse ends the process on such files (a segmentation fault when cut short, an abort
    when a number inside a tree is damaged): they are refused before it runs (in a process of its own
    here, so that the code before shows as a crash, not as the end of this test run).  ``kept``: the
    manifest keeps the file's checksum (a bundle trained before it did is checked by its layout alone)."""
    shutil.copytree(SHIPPED_DIR, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    model = tmp_path / "m" / manifest["files"]["purchase"]
    text = model.read_text()
    if damage == "cut short":  # a copy that stopped part way (a full disk, an interrupted transfer)
        model.write_text(text[: len(text) // 3])
        expected = "its SHA-256 differs" if kept else "not a whole LightGBM model"
    elif damage == "a digit changed":
        at = text.index("leaf_value=", text.index("Tree=3")) + len("leaf_value=")
        model.write_text(text[:at] + ("9" if text[at] != "9" else "8") + text[at + 1:])
        expected = "its SHA-256 differs" if kept else ""  # without the checksum: a model still, another one
    else:  # a bit flipped in a number: the layout is whole, LightGBM's parallel parse aborts on it
        at = text.index("threshold=", text.index("Tree=3")) + len("threshold=")
        model.write_text(text[:at] + "x" + text[at + 1:])
        expected = "its SHA-256 differs" if kept else "no conversion to double"
    if not kept:
        del manifest["sha256"]
        (tmp_path / "m" / MANIFEST).write_text(json.dumps(manifest))
    done = subprocess.run([sys.executable, "-c", _LOAD.format(path=str(tmp_path / "m"))], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode >= 0, f"the process crashed (signal {-done.returncode}): {done.stderr[-300:]}"
    if expected:
        assert done.returncode == 1 and "ModelError" in done.stderr and expected in done.stderr, done.stderr[-500:]
        assert "[LightGBM]" not in done.stderr  # refused before LightGBM read it
    else:
        assert done.returncode == 0, done.stderr[-500:]


def test_score_with_a_damaged_model_says_so_in_one_line(history: Path, tmp_path: Path) -> None:
    shutil.copytree(SHIPPED_DIR, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    model = tmp_path / "m" / manifest["files"]["purchase"]
    model.write_bytes(model.read_bytes()[:2000])
    cli = "import sys; from streams.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", cli, "score", "--events", str(history), "--as-of", AS_OF,
                           "--models", str(tmp_path / "m"), "--out", str(tmp_path / "scores.jsonl")],
                          capture_output=True, text=True, timeout=120)
    err = done.stderr
    assert done.returncode > 0 and len(err.strip().splitlines()) == 1 and "its SHA-256 differs" in err, err[-500:]




_SCORE_WITHOUT = """
import sys
import numpy as np
{first}
from models.bundle import SHIPPED_DIR, ModelBundle
bundle = ModelBundle.load(SHIPPED_DIR)
print(repr(sorted(name for name in ("pandas", "sklearn") if sys.modules.get(name) is not None)))
import pandas, sklearn  # still importable once lightgbm is in
rows = np.random.default_rng(7).random((200, bundle.booster.num_feature())) * 50
print(repr(bundle.purchase_probabilities(rows.tolist())))
"""


def test_lightgbm_is_loaded_without_pandas_and_sklearn_and_predicts_the_same() -> None:
    """``import_lightgbm`` (how a worker loads its models) keeps lightgbm from importing pandas and
    scikit-learn, which a worker never uses, leaves alone what was imported before it, and changes no
    prediction: the same as a lightgbm imported the usual way, with both."""
    import subprocess
    import sys
    from ast import literal_eval

    # installed with the development extras; without them there is nothing to leave out
    pytest.importorskip("pandas")
    pytest.importorskip("sklearn")
    runs = {}
    for first in ("", "import pandas", "import lightgbm"):
        done = subprocess.run([sys.executable, "-c", _SCORE_WITHOUT.format(first=first)], capture_output=True,
                              text=True, cwd=Path(__file__).parents[2], check=True)
        loaded, predicted = done.stdout.splitlines()
        runs[first] = literal_eval(loaded), literal_eval(predicted)
    assert {first: loaded for first, (loaded, _) in runs.items()} == {
        "": [], "import pandas": ["pandas"], "import lightgbm": ["pandas", "sklearn"]}
    predictions = [predicted for _, predicted in runs.values()]
    assert len(predictions[0]) == 200 and predictions[0] == predictions[1] == predictions[2]


def _edited_model(tmp_path: Path, edit: Any, calibrated: bool = True) -> Path:
    """A copy of the shipped models whose model file ``edit`` (text -> text) changed, the sizes of the
    trees in its header and the manifest's checksum made to match (a whole file, as LightGBM reads it)."""
    shutil.copytree(SHIPPED_DIR, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    model = tmp_path / "m" / manifest["files"]["purchase"]
    head, trees = model.read_text().split("\nTree=0\n", 1)
    first, rest = ("Tree=0\n" + trees).split("\nTree=1\n", 1)
    header, first = edit(head), edit(first + "\n")
    sizes = re.search(r"tree_sizes=(.*)", header)
    assert sizes is not None
    numbers = sizes.group(1).split()
    numbers[0] = str(len(first))
    header = header.replace(sizes.group(0), "tree_sizes=" + " ".join(numbers))
    model.write_text(header + "\n" + first + "Tree=1\n" + rest)
    manifest["sha256"]["purchase"] = hashlib.sha256(model.read_bytes()).hexdigest()
    if not calibrated:
        manifest["calibration"] = None
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(manifest))
    return tmp_path / "m"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("calibrated", [True, False])
def test_a_model_whose_leaf_is_not_a_number_is_refused(tmp_path: Path, value: str, calibrated: bool) -> None:
    # (was loaded: a profile that reached that leaf was scored NaN, written as null by score and sent on
    # scores, or the calibration's lookup raised an IndexError, a traceback from score and a crashed worker)
    directory = _edited_model(tmp_path, lambda text: re.sub(r"leaf_value=\S+", f"leaf_value={value}", text,
                                                            count=1), calibrated)
    with pytest.raises(ModelError, match="not a number"):
        ModelBundle.load(directory)


@pytest.mark.parametrize("objective", ["regression", "poisson", "lambdarank"])
def test_a_model_that_does_not_give_probabilities_is_refused(tmp_path: Path, objective: str) -> None:
    # (was loaded: its raw outputs became purchase probabilities below 0 or above 1, churn the rest)
    directory = _edited_model(tmp_path, lambda text: text.replace("objective=binary sigmoid:1",
                                                                  f"objective={objective}"), calibrated=False)
    with pytest.raises(ModelError, match="objective"):
        ModelBundle.load(directory)


def test_a_model_trained_with_its_features_in_another_order_is_refused(tmp_path: Path) -> None:
    # (was loaded: every row's columns went to the model in the order it was not trained on)
    directory = _edited_model(tmp_path, lambda text: text.replace(
        "feature_names=days_since_first_seen days_since_last_activity",
        "feature_names=days_since_last_activity days_since_first_seen"))
    with pytest.raises(ModelError, match="other features"):
        ModelBundle.load(directory)


@pytest.mark.parametrize("version", ["20260531-bab6c673\nmailpulse: scored 0 profiles", "", None, 5, {"a": 1},
                                     "v" * 1000])
def test_a_manifest_whose_version_is_not_a_one_line_name_is_a_model_error(tmp_path: Path, version: object) -> None:
    # (was loaded as str(version): a line of its own in score's summary, and that text in every scores
    # message, every prediction and the churn trigger's id)
    shutil.copytree(SHIPPED_DIR, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    manifest["version"] = version
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="version"):
        ModelBundle.load(tmp_path / "m")


@pytest.mark.parametrize(("line", "value"), [("num_class", 2), ("num_tree_per_iteration", 2),
                                             ("num_tree_per_iteration", 10**9), ("num_class", 10**9)])
def test_a_model_of_more_than_one_output_is_refused_before_it_parses(tmp_path: Path, line: str, value: int) -> None:
    """(was parsed: two classes made every prediction a TypeError, a traceback from score; two trees an
    iteration gave other probabilities than the model's; 10^9 ended the process with a segmentation
    fault.)  In a process of its own, so that a crash shows as one."""
    directory = _edited_model(tmp_path, lambda text: text.replace(f"\n{line}=1\n", f"\n{line}={value}\n"))
    done = subprocess.run([sys.executable, "-c", _LOAD.format(path=str(directory))], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 1, done.stderr[-500:]
    assert "ModelError" in done.stderr and f"{line} is {value}" in done.stderr


@pytest.mark.parametrize("sigmoid", ["nan", "inf"])
@pytest.mark.parametrize("calibrated", [True, False])
def test_a_binary_model_whose_sigmoid_is_not_a_finite_number_is_refused(tmp_path: Path, sigmoid: str,
                                                                          calibrated: bool) -> None:
    # (was loaded: NaN made every prediction NaN, null in score's output and on scores, or an IndexError
    # in the calibration; LightGBM itself refuses 0 and negative ones)
    directory = _edited_model(tmp_path, lambda text: text.replace("objective=binary sigmoid:1",
                                                                  f"objective=binary sigmoid:{sigmoid}"), calibrated)
    with pytest.raises(ModelError, match="sigmoid"):
        ModelBundle.load(directory)


@pytest.mark.parametrize(("old", "new"), [("\nnum_leaves=31\n", "\nnum_leaves=1000000000\n"),
                                          ("\nnum_leaves=31\n", "\nnum_leaves=30\n"),
                                          ("\nleft_child=1 ", "\nleft_child=100000 "),
                                          ("\nsplit_feature=2 ", "\nsplit_feature=1000000 "),
                                          ("\nsplit_feature=2 ", "\nsplit_feature=-1 ")])
def test_a_tree_that_is_not_what_it_says_is_refused_before_it_parses(tmp_path: Path, old: str, new: str) -> None:
    """(was parsed, its checksum matching: LightGBM aborted the process, and run or score died without a
    word.)  In a process of its own, so that a crash shows as one."""
    directory = _edited_model(tmp_path, lambda text: text.replace(old, new, 1))
    done = subprocess.run([sys.executable, "-c", _LOAD.format(path=str(directory))], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 1, done.stderr[-500:]
    assert "ModelError" in done.stderr and "tree 0" in done.stderr


def test_score_leaves_out_people_the_history_erases_after_as_of(capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:
    # contract: an erased person's profile is deleted and no later output mentions it; `score` runs
    # after the erase, so its lines must not name them, whatever --as-of is
    day = 86_400_000
    start = parse_timestamp("2026-03-01T00:00:00Z")
    events: list[dict[str, Any]] = []
    for n, user in enumerate(("u-kept", "u-erased", "u-merged", "u-back")):
        events += [{"event_id": f"v-{user}", "type": "page_view", "timestamp": start + n, "user_id": user},
                   {"event_id": f"o-{user}", "type": "purchase", "timestamp": start + day + n, "user_id": user,
                    "order_id": f"o-{user}", "total": 20.0}]
    events.append({"event_id": "v-anon", "type": "page_view", "timestamp": start + 3, "anonymous_id": "a-later"})
    # after as-of: u-erased is erased; a-later logs in as u-merged, who is then erased through it
    events += [{"event_id": "e-1", "type": "erase", "timestamp": start + 10 * day, "user_id": "u-erased"},
               {"event_id": "i-1", "type": "identify", "timestamp": start + 10 * day, "user_id": "u-merged",
                "anonymous_id": "a-later"},
               {"event_id": "e-2", "type": "erase", "timestamp": start + 11 * day, "anonymous_id": "a-later"},
               # u-back is erased and comes back: someone new, who does not bring the old profile back
               {"event_id": "e-3", "type": "erase", "timestamp": start + 10 * day, "user_id": "u-back"},
               {"event_id": "v-back", "type": "page_view", "timestamp": start + 12 * day, "user_id": "u-back"}]
    history = tmp_path / "history.jsonl"
    history.write_text("".join(json.dumps(event) + "\n" for event in events))
    out = tmp_path / "scores.jsonl"
    code, _, err = run(capsys, "score", "--events", str(history), "--as-of", "2026-03-05T00:00:00Z", "--models",
                       str(SHIPPED_DIR), "--out", str(out), "--jobs", "1")
    assert code == 0, err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["user_id"] for line in lines] == ["u-kept"]
    assert "scored 1 profiles from 9 events " in err, err  # (the events up to --as-of: those scored)
