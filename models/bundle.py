"""Model artifacts on disk: what ``mailpulse train`` writes and the stream and ``score`` load.

A model directory holds::

    manifest.json                    version, horizon, as-of, feature names, calibration, file names,
                                     the model file's SHA-256 (checked at load)
    purchase-<version>.txt           the LightGBM booster (text format)
    metrics-<version>.json           the training report (also printed by ``train``)
    MODEL_CARD.md                    the report for people: data, split, metrics against the baselines
    roc.png, calibration.png         the test set's ROC and calibration curves

One binary classifier gives the probability of at least one purchase in the horizon; its raw output
goes through the isotonic calibration the manifest holds (none in a manifest without one).  The
churn probability is its complement (contract: the probability of no purchase in the horizon), so the
two always add up to 1.  ``models/shipped`` is the directory the stream uses unless
``MAILPULSE_MODELS_DIR`` names another.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.evaluation import Isotonic
from models.features import FEATURES

MANIFEST = "manifest.json"
#: The models shipped with mailpulse (trained on ``mailpulse generate`` history: see its manifest).
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
#: The most leaves a tree may have (LightGBM's own bound on ``num_leaves``).
MAX_LEAVES = 131_072
#: The longest ``version`` a manifest may hold (``train`` writes ``YYYYMMDD-`` and 8 hex digits).
MAX_VERSION = 128
#: ``mailpulse_model_info``'s ``model`` labels.
MODEL_NAMES = ("purchase_probability", "churn_probability")
#: Libraries lightgbm imports whenever they are installed (for DataFrame input and its scikit-learn
#: estimators), which mailpulse never uses: it passes numpy arrays.  The development extras install
#: both (``recordlinkage`` needs them).
UNUSED_BY_LIGHTGBM_HERE = ("pandas", "sklearn")


def import_lightgbm() -> Any:
    """lightgbm, imported (the first time) as if :data:`UNUSED_BY_LIGHTGBM_HERE` were not installed:
    they are marked absent while it loads (``sys.modules[name] = None`` makes their import raise
    ``ImportError``, and lightgbm goes on without them), then unmarked, so the process can still
    import them itself (lightgbm's DataFrame and scikit-learn support stay off in it, which nothing
    here uses).  One already imported is left alone.  Where they are installed, the import takes ~1.2 s
    less and a worker holds ~90 MB less, with the same predictions."""
    left_out = [name for name in UNUSED_BY_LIGHTGBM_HERE if name not in sys.modules]
    for name in left_out:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import lightgbm
    finally:
        for name in left_out:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return lightgbm


class ModelError(ValueError):
    """A model directory that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class ModelBundle:
    version: str
    horizon_days: float
    as_of: str
    booster: Any  # lightgbm.Booster
    directory: Path
    calibration: Isotonic | None = None

    @classmethod
    def load(cls, directory: Path) -> ModelBundle:
        lightgbm = import_lightgbm()
        path = directory / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(f"{directory}: no {MANIFEST} (not a directory written by `mailpulse train`)") from None
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: cannot read: {exc}") from None
        except RecursionError:  # (JSON nested deeper than the interpreter's recursion limit)
            raise ModelError(f"{path}: cannot read: not a manifest (nested too deeply)") from None
        try:
            version, horizon, as_of = manifest["version"], float(manifest["horizon_days"]), manifest["as_of"]
            features, model_file = manifest["features"], manifest["files"]["purchase"]
            if not isinstance(version, str) or not 0 < len(version) <= MAX_VERSION or not version.isprintable():
                raise ValueError(f"version {str(version)[:40]!r} is not a name of one line")  # (it is in every
                # scores message, prediction and churn trigger id, and in score's summary line)
            if not isinstance(model_file, str) or not model_file or "\0" in model_file:  # (else a TypeError or
                raise ValueError(f"files.purchase {model_file!r} is not a file name")  # ValueError in the read)
            checksum = (manifest.get("sha256") or {}).get("purchase")  # (none before the manifest kept it)
            calibration = None if manifest.get("calibration") is None else Isotonic.from_json(manifest["calibration"])
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{path}: incomplete manifest ({exc})") from None
        if not isinstance(features, list) or tuple(features) != FEATURES:  # (not a list: a TypeError here)
            raise ModelError(f"{path}: trained with other features than this version computes; "
                             "train again with `mailpulse train`")
        model_path = directory / model_file
        try:
            data = model_path.read_bytes()
        except OSError as exc:
            raise ModelError(f"{model_path}: cannot read: {exc.strerror or exc}") from None
        # LightGBM ends the process (a segmentation fault, or an abort from its parallel parse) on a model
        # file cut short or damaged inside a tree, rather than raising: such a file is refused before it parses
        if checksum is not None and hashlib.sha256(data).hexdigest() != checksum:
            raise ModelError(f"{model_path}: not the file its manifest was written with (its SHA-256 differs): "
                             "damaged or replaced; restore it or train again")
        header = _header(data)
        problem = _layout_problem(data)
        if problem is None:
            problem = _header_problem(header) or _leaf_problem(data)
        if problem is None and checksum is None:  # (a bundle trained before the manifest kept it)
            problem = _parse_problem(data)  # a number damaged inside a tree: only a parse tells, and it aborts
        if problem is not None:
            raise ModelError(f"{model_path}: not a whole LightGBM model ({problem}): damaged or cut short; "
                             "restore it or train again")
        try:
            booster = lightgbm.Booster(model_str=data.decode())
        except Exception as exc:  # lightgbm raises its own LightGBMError for a bad model; the decode a ValueError
            raise ModelError(f"{model_path}: cannot load the model: {exc}") from None
        if booster.num_feature() != len(FEATURES):  # predict would fail on every profile
            raise ModelError(f"{model_path}: the model takes {booster.num_feature()} features, "
                             f"the manifest names {len(FEATURES)}")
        if booster.feature_name() != list(FEATURES):  # each row's columns would go to the wrong feature
            raise ModelError(f"{model_path}: trained with other features (or another order) than this version "
                             "computes; train again with `mailpulse train`")
        objective, *options = header.get(b"objective", b"").split(b" ")
        if objective != b"binary":  # its outputs are no probabilities: scores below 0 or above 1
            raise ModelError(f"{model_path}: a model with objective {objective.decode(errors='replace')[:40]!r}, "
                             "not 'binary': its outputs are not purchase probabilities")
        for option in options:  # NaN or infinite: outputs NaN (LightGBM refuses 0 and negative ones itself)
            if option.startswith(b"sigmoid:") and not 0 < _number(option.removeprefix(b"sigmoid:")) < math.inf:
                raise ModelError(f"{model_path}: a binary model whose {option.decode(errors='replace')[:40]!r} is "
                                 "not a positive number: its outputs are not purchase probabilities")
        return cls(version, horizon, str(as_of), booster, directory, calibration)

    def purchase_probabilities(self, rows: Sequence[Sequence[float]]) -> list[float]:
        """P(at least one purchase in the horizon) for each feature row (:func:`models.features.feature_row`)."""
        if not rows:
            return []
        matrix = np.asarray(rows, dtype=np.float64)
        raw = [float(p) for p in self.booster.predict(matrix, num_threads=1)]
        return raw if self.calibration is None else [self.calibration.one(p) for p in raw]


def _layout_problem(data: bytes) -> str | None:
    """What keeps ``data`` from being a whole LightGBM text model, as far as LightGBM trusts it unchecked:
    its parse reads each tree at the offset its header's ``tree_sizes`` gives (None: nothing found)."""
    if not data.startswith(b"tree\n"):
        return "no model header"
    body = data.find(b"\nTree=0\n") + 1  # (0: not found)
    sizes = next((line.removeprefix(b"tree_sizes=") for line in data[:body].split(b"\n")
                  if line.startswith(b"tree_sizes=")), None)
    if not body or sizes is None:
        return "no trees"
    try:
        lengths = [int(size) for size in sizes.split()]
    except ValueError:
        return "its tree sizes are not numbers"
    at = body
    for number, length in enumerate(lengths):
        if length <= 0 or not data.startswith(b"Tree=%d\n" % number, at):
            return f"tree {number} is not where its header puts it"
        at += length
    if not data.startswith(b"end of trees\n", at):
        return "it ends before its last tree does"
    return None


def _number(text: bytes) -> float:
    """``text`` as a number (NaN: not one)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _header(data: bytes) -> dict[bytes, bytes]:
    """The model file's header (the lines before its first tree) as name -> value, the first of a name."""
    header: dict[bytes, bytes] = {}
    for line in data[:data.find(b"\nTree=0\n")].split(b"\n"):
        name, equals, value = line.partition(b"=")
        if equals:
            header.setdefault(name, value)
    return header


def _header_problem(header: dict[bytes, bytes]) -> str | None:
    """A header of other than one tree an iteration for one class, as ``train`` writes: two classes give
    no single probability, two trees an iteration other sums, and a huge number ends LightGBM's parse
    (a segmentation fault)."""
    for name in (b"num_class", b"num_tree_per_iteration"):
        value = header.get(name, b"")
        if value != b"1":
            return f"{name.decode()} is {value.decode(errors='replace')[:20] or 'missing'}, not 1"
    return None


#: The per-node lists of a tree: (name, entries less than its leaves).
_NODE_LISTS = ((b"split_feature", 1), (b"split_gain", 1), (b"threshold", 1), (b"decision_type", 1),
               (b"left_child", 1), (b"right_child", 1), (b"leaf_value", 0), (b"leaf_weight", 0), (b"leaf_count", 0),
               (b"internal_value", 1), (b"internal_weight", 1), (b"internal_count", 1))


def _leaf_problem(data: bytes) -> str | None:
    """A tree whose lists do not hold as many entries as its ``num_leaves`` says, whose children point
    outside it, or a leaf value that is not a finite number (NaN or infinite).  LightGBM ends the
    process on the first (an abort in its parse), reads outside the tree on the second, and on the
    third a profile that reaches that leaf gets no probability (NaN) or one the calibration cannot place."""
    for number, tree in enumerate(data.split(b"\nTree=")[1:]):
        lines = dict(line.split(b"=", 1) for line in tree.split(b"\n", 20)[1:20] if b"=" in line)
        try:
            leaves = int(lines.get(b"num_leaves", b""))
            lists = {name: lines[name].split() for name, _ in _NODE_LISTS if name in lines}
            values = [float(value) for value in lists.get(b"leaf_value", ())]
            children = [int(child) for name in (b"left_child", b"right_child") for child in lists.get(name, ())]
            features = [int(feature) for feature in lists.get(b"split_feature", ())]
        except ValueError:
            return f"tree {number} holds a value that is not a number"
        if not 0 < leaves <= MAX_LEAVES or any(len(lists[name]) != leaves - fewer for name, fewer in _NODE_LISTS
                                                if name in lists) or len(values) != leaves:
            return f"tree {number} does not hold the {leaves} leaves it says"
        if any(not -leaves <= child < leaves - 1 for child in children):
            return f"tree {number} has a node outside it"
        if any(not 0 <= feature < len(FEATURES) for feature in features):  # (a read outside the row)
            return f"tree {number} splits on a feature the rows do not have"
        if not all(math.isfinite(value) for value in values):
            return f"a leaf value of tree {number} is not a number"
    return None


#: The parse of :func:`_parse_problem`, in a process of its own: the model text on stdin.
_PARSE = "import sys; from models.bundle import import_lightgbm; import_lightgbm().Booster(model_str=sys.stdin.read())"


def _parse_problem(data: bytes) -> str | None:
    """What LightGBM's parse of ``data`` met, asked of a process of its own (None: it parsed, or no
    process could be started): on a number damaged inside a tree it ends the process it runs in."""
    try:
        done = subprocess.run([sys.executable, "-c", _PARSE], input=data, capture_output=True, timeout=300,
                              cwd=Path(__file__).resolve().parent.parent)
    except (OSError, subprocess.SubprocessError):
        return None  # (not checked: parsed here, as before)
    if done.returncode == 0:
        return None
    said = [line for line in done.stderr.decode(errors="replace").splitlines() if "[Fatal]" in line]
    return said[-1].split("[Fatal]", 1)[1].strip()[:200] if said else "LightGBM cannot parse it"


def write_bundle(directory: Path, booster: Any, calibration: Isotonic | None, version: str, horizon_days: float,
                 as_of: str, report: dict[str, Any], documents: dict[str, tuple[str, bytes]] | None = None) -> Path:
    """Writes the model, its report, ``documents`` (name in the manifest -> (file name, content)) and
    (last, so a reader never sees a half-written one) the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    model_file, metrics_file = f"purchase-{version}.txt", f"metrics-{version}.json"
    booster.save_model(str(directory / model_file))
    checksum = hashlib.sha256((directory / model_file).read_bytes()).hexdigest()
    (directory / metrics_file).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    files = {"purchase": model_file, "metrics": metrics_file}
    for name, (file_name, content) in (documents or {}).items():
        (directory / file_name).write_bytes(content)
        files[name] = file_name
    manifest = {
        "version": version,
        "horizon_days": horizon_days,
        "as_of": as_of,
        "features": list(FEATURES),
        "calibration": None if calibration is None else calibration.to_json(),
        "files": files,
        "sha256": {"purchase": checksum},  # checked at load: LightGBM crashes on a damaged model file
        "churn_probability": "1 - purchase_probability",
    }
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    tmp.replace(directory / MANIFEST)
    return directory / MANIFEST
