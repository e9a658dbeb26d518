"""The training report as text: the table ``train`` prints and ``MODEL_CARD.md``."""

from __future__ import annotations

from typing import Any

from models.features import FEATURES

MODELS = (("model", "model (LightGBM, calibrated)"), ("BG/NBD", "BG/NBD"), ("heuristic", "recency-frequency"))
METRICS = (("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC"), ("brier", "Brier"), ("ece", "ECE"))
POPULATIONS = (("all", "all test examples"), ("customers", "test customers (a purchase before the cut)"))


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def metric_rows(report: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(population, model, [ROC-AUC, PR-AUC, Brier, ECE]) of every evaluated population."""
    rows = []
    for population, label in POPULATIONS:
        figures = (report.get("test") or {}).get(population)
        if figures is None:
            continue
        title = f"{label}: {figures['examples']:,} examples, purchase rate {figures['purchase_rate']:.3f}"
        for key, name in MODELS:
            rows.append((title, name, [_number(figures[key][metric]) for metric, _ in METRICS]))
    return rows


def report_table(report: dict[str, Any]) -> str:
    """A plain-text table of the test metrics (what ``train`` prints to stderr)."""
    lines: list[str] = []
    current = None
    for title, name, values in metric_rows(report):
        if title != current:
            lines += [title, f"  {'':<30}" + "".join(f"{label:>9}" for _, label in METRICS)]
            current = title
        lines.append(f"  {name:<30}" + "".join(f"{value:>9}" for value in values))
    return "\n".join(lines)


def model_card(report: dict[str, Any]) -> str:
    """``MODEL_CARD.md``: what the model predicts, what it learnt from, how well it does against the
    baselines, and what it does not know."""
    examples, people, rates = report["examples"], report["people"], report["purchase_rate"]
    bg = report.get("bgnbd")
    split = report["split"]
    knots = "none" if report["calibration"] is None else f"{report['calibration']['knots']} knots"
    lines = [
        f"# Model card: purchase probability {report['model_version']}",
        "",
        f"**Predicts** the probability of at least one purchase in the {report['horizon_days']} days after the "
        "time of scoring (`purchase_probability`); `churn_probability` is 1 minus it. "
        f"Churn definition: {report['churn_definition']}.",
        "",
        f"**Model**: LightGBM binary classifier ({report['trees']} trees, early stopping on the validation log "
        f"loss), monotone constraints on {', '.join(f'`{n}`' for n in sorted(report['monotone']))}, then isotonic "
        f"calibration fitted on the validation set ({knots}). "
        f"{len(FEATURES)} features (`models/features.py`): activity recency and counts, the open cart, e-mail "
        "consent, purchases and spend in 30/90/180/365-day windows, purchase intervals, BG/NBD's x, t_x and T, "
        "purchase trend and order-value spread.",
        "",
        f"**Data**: the history up to {report['as_of']}, cut at {len(report['cutoffs'])} times one horizon apart "
        f"({report['cutoffs'][0][:10]} to {report['cutoffs'][-1][:10]}); every profile at a cut is one example. "
        + (f"Split in time: the model learns from the older cuts ({examples['train']:,} examples, "
           f"{people['train']:,} people, purchase rate {rates['train']}); the newest cut "
           f"({split['validation_and_test_cut'][:10]}) is split by person into validation "
           f"({examples['validation']:,} examples: early stopping, calibration, the heuristic's rates) and test "
           f"({examples['test']:,} examples, purchase rate {rates['test']}: nothing is fitted on it)."
           if split["kind"] == "time" else
           f"One cut only: split by person into training ({examples['train']:,}), validation "
           f"({examples['validation']:,}) and test ({examples['test']:,} examples)."),
        "",
        "**Baselines**, fitted in the same run on the same history: BG/NBD (Fader, Hardie and Lee 2005; "
        "`models/bgnbd.py`) fitted by maximum likelihood to every customer's (x, t_x, T) in days at the newest "
        + ("cut" if bg is None else
           f"cut ({bg['customers']:,} customers: r={bg['r']:.3f}, alpha={bg['alpha']:.3f}, a={bg['a']:.3f}, "
           f"b={bg['b']:.3f})")
        + ", its P(at least one purchase in the horizon); profiles without a purchase get the validation rate "
        "of such profiles. Recency-frequency heuristic: the validation set's purchase rate of the example's "
        "(days since last purchase, orders) cell.",
        "",
        "## Test metrics",
        "",
        "ROC-AUC and PR-AUC (average precision): ranking, higher is better. Brier score and expected "
        "calibration error (ECE, 10 equal-width bins): lower is better.",
        "",
    ]
    current = None
    for title, name, values in metric_rows(report):
        if title != current:
            lines += [f"*{title}*", "", "| model | " + " | ".join(label for _, label in METRICS) + " |",
                      "|---|" + "---:|" * len(METRICS)]
            current = title
        lines.append(f"| {name} | " + " | ".join(values) + " |")
        if name == MODELS[-1][1]:
            lines.append("")
    floors = [f"{figures['ece_noise_floor']:.4f} on the {label}" for label, figures in
              ((label, (report.get("test") or {}).get(key)) for key, label in POPULATIONS)
              if figures is not None and "ece_noise_floor" in figures]
    if floors:
        lines.append("The ECE a perfectly calibrated model with the model's predictions would show on as many "
                     f"examples (its sampling noise, from labels drawn from the predictions): {'; '.join(floors)}.")
    lines += [
        "",
        "Curves: [roc.png](roc.png), [calibration.png](calibration.png) (all test examples).",
        "",
        "## Limits",
        "",
        "- Trained on the history it was given: a shop, season or campaign mix unlike it needs a new model.",
        "- A profile keeps its newest 100 purchases; older ones (and those of profiles stored before the list "
        "existed) enter the window and interval features as an even spread between the first purchase and the "
        "oldest one kept.",
        "- The test set is one cut (one point in time): its figures carry sampling noise (ECE especially on a "
        "few thousand examples) and say nothing about seasons the history does not hold.",
        "",
    ]
    return "\n".join(lines)
