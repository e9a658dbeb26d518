"""streams.domain.config: defaults, overrides, and one clear error for a bad file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.cli import main
from streams.config_file import ConfigError, load_config
from streams.domain.config import PipelineConfig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_contract_defaults() -> None:
    config = load_config(None)
    assert config == PipelineConfig()
    assert (config.guardrails.require_consent, config.guardrails.per_type_per_day,
            config.guardrails.per_profile_per_day) == (False, 1, 3)
    assert config.triggers.cart_abandoned.delay_minutes == 30 and config.triggers.churn_risk.threshold == 0.7
    assert config.segments.high_value.min_spend == 500


def test_overrides_keep_other_defaults(tmp_path: Path) -> None:
    text = "guardrails:\n  require_consent: true\nsegments:\n  high_value: {min_spend: 800}\n"
    config = load_config(write(tmp_path, text))
    assert config.guardrails.require_consent and config.guardrails.per_profile_per_day == 3
    assert config.segments.high_value.min_spend == 800 and config.triggers.welcome.enabled


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("guardrails: [1, 2\n", "not valid YAML"),
        ("- 1\n- 2\n", "top level must be a mapping"),
        ("guardrail:\n  require_consent: true\n", "guardrail: unknown key"),
        ("triggers:\n  cart_abandoned: {delay_minute: 5}\n", "triggers.cart_abandoned.delay_minute: unknown key"),
        ("triggers:\n  cart_abandoned: {delay_minutes: -5}\n",
         "triggers.cart_abandoned.delay_minutes: Input should be greater than 0"),
        ("limits:\n  cart_line: 5\n", "limits.cart_line: unknown key"),
        ("limits:\n  seen_ids: 10\n", "limits.seen_ids: Input should be greater than or equal to 64"),
        ("limits:\n  traits: 0\n", "limits.traits: Input should be greater than or equal to 1"),
        ("triggers:\n  cart_abandoned: {delay_minutes: .inf}\n",
         "triggers.cart_abandoned.delay_minutes: Input should be a finite number"),
        ("segments:\n  recent_browsers: {within_hours: .nan}\n", "Input should be a finite number"),
        ("guardrails: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    ],
)
def test_bad_files_name_the_key_and_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"config\.yaml") as err:
        load_config(write(tmp_path, text))
    assert message in str(err.value)


def test_a_file_that_is_not_utf_8_is_named_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes("segments:\n  caf\u00e9: {}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"config\.yaml: not UTF-8 text"):
        load_config(path)


def test_settings_refuse_infinite_and_undefined_numbers(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in (("MAILPULSE_DELIVER_GRACE_S", "inf"), ("MAILPULSE_WALL_CLOCK_DELAY_S", "nan")):
        monkeypatch.setenv(name, value)
        assert main(["run"]) == 2
        err = capsys.readouterr().err
        assert "finite number" in err and err.count("\n") == 1
        monkeypatch.delenv(name)


def test_limits_name_every_bound_of_a_profile_with_its_default(tmp_path: Path) -> None:
    import dataclasses

    from streams.domain.profile import DEFAULT_LIMITS, Limits
    from streams.domain.timeline import RuleSet

    assert PipelineConfig().limits.model_dump() == dataclasses.asdict(DEFAULT_LIMITS)
    config = load_config(write(tmp_path, "limits:\n  cart_lines: 500\n  parked_events: 50\n"))
    assert RuleSet.build(config, 1).limits == Limits(cart_lines=500, parked_events=50)


def test_run_stops_at_start_on_a_bad_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MAILPULSE_CONFIG", str(write(tmp_path, "segments:\n  high_value: {min_spend: lots}\n")))
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mailpulse: error: MAILPULSE_CONFIG") and "segments.high_value.min_spend" in err
    assert err.count("\n") == 1


def test_the_readme_config_example_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index("```yaml\nguardrails:") + len("```yaml\n")
    config = load_config(write(tmp_path, readme[start:readme.index("```", start)]))
    assert config == load_config(write(tmp_path, "segments:\n" + readme[readme.index("  big_spenders_de:"):
                                                                        readme.index("```", start)]))
    assert list(config.segments.custom()) == ["big_spenders_de"]


def test_run_says_in_one_line_that_it_runs_without_scores_when_the_models_cannot_be_loaded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MAILPULSE_MODELS_DIR", str(tmp_path))
    monkeypatch.delenv("MAILPULSE_CONFIG", raising=False)
    monkeypatch.setenv("MAILPULSE_BROKER", "kafka://127.0.0.1:1")  # it goes on, and stops for want of a broker
    assert main(["run"]) == 2
    warning, error = capsys.readouterr().err.splitlines()
    assert warning.startswith("mailpulse: warning: MAILPULSE_MODELS_DIR") and "no manifest.json" in warning
    assert warning.endswith("running without scores") and "broker" in error
    # with JSON logs, the warning and the error are JSON objects as every line of the worker's log is
    from streams import logs

    monkeypatch.setattr(logs, "_format", "text")  # (restored after the test)
    monkeypatch.setenv("MAILPULSE_LOG_FORMAT", "json")
    assert main(["run"]) == 2
    warning, error = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert warning["level"] == "warning" and warning["message"].endswith("running without scores")
    assert error["level"] == "error" and "broker" in error["message"]
    monkeypatch.delenv("MAILPULSE_LOG_FORMAT")
    # without scoring, no models are needed: not a word about them
    monkeypatch.setenv("MAILPULSE_CONFIG", str(write(tmp_path, "scoring: {enabled: false}\n")))
    assert main(["run"]) == 2
    assert "MAILPULSE_MODELS_DIR" not in capsys.readouterr().err


def test_a_worker_with_an_unusable_model_directory_runs_without_scores_and_says_so(tmp_path: Path) -> None:
    from streams.app import create_app
    from streams.settings import Settings
    from tests.fakes import RecordingOutput

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "manifest.json").write_text("{not json")
    settings = Settings(broker="kafka://127.0.0.1:1", table_store="memory", data_dir=tmp_path,
                        models_dir=tmp_path / "models")
    p = create_app(settings, output=RecordingOutput())
    assert p.rules.scorer is None
    assert p.metrics.registry.get_sample_value("mailpulse_models_unavailable") == 1
    shipped = create_app(Settings(broker="kafka://127.0.0.1:1", table_store="memory", data_dir=tmp_path / "s"),
                         output=RecordingOutput())
    assert shipped.rules.scorer is not None
    assert shipped.metrics.registry.get_sample_value("mailpulse_models_unavailable") == 0


def test_run_loads_the_models_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``run`` loads the bundle to say at start whether it can score, and the worker scores with that
    one: a load reads, hashes and checks the whole model file (for an older bundle, a parse in a process
    of its own), and was done again by the app."""
    from models.bundle import ModelBundle
    from streams import worker
    from streams.app import create_app
    from streams.settings import Settings
    from tests.fakes import RecordingOutput

    loads: list[Path] = []
    load = ModelBundle.load.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(ModelBundle, "load", classmethod(lambda cls, directory: loads.append(directory)
                                                         or load(cls, directory)))
    handed: list[object] = []
    monkeypatch.setattr(worker, "run_worker",
                        lambda settings, demo=False, models=None, config=None: handed.append(models) or 0)
    monkeypatch.delenv("MAILPULSE_CONFIG", raising=False)
    monkeypatch.delenv("MAILPULSE_BROKER", raising=False)
    monkeypatch.setenv("MAILPULSE_DATA_DIR", str(tmp_path / "data"))
    assert main(["run"]) == 0
    [bundle] = handed
    assert isinstance(bundle, ModelBundle) and len(loads) == 1
    p = create_app(Settings(broker="kafka://127.0.0.1:1", table_store="memory", data_dir=tmp_path),
                   output=RecordingOutput(), models=bundle)
    assert p.rules.scorer is not None and len(loads) == 1


def test_scoring_keys_are_checked(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "scoring: {delay_minutes: 5}\n")).scoring.delay_minutes == 5
    with pytest.raises(ConfigError, match=r"scoring\.idle_days\.1"):
        load_config(write(tmp_path, "scoring: {idle_days: [1, -3]}\n"))
    with pytest.raises(ConfigError, match=r"scoring\.every: unknown key"):
        load_config(write(tmp_path, "scoring: {every: 3}\n"))


@pytest.mark.parametrize(("text", "message"), [
    ("triggers:\n  cart_abandoned: {delay_minutes: 1.0e+300}\n", "triggers.cart_abandoned.delay_minutes"),
    ("scoring:\n  idle_days: [1, 1.0e+12]\n", "scoring.idle_days.1"),
    ("time:\n  max_future_minutes: 1.0e+20\n", "time.max_future_minutes"),
    ("segments:\n  loyal:\n    rule: {event: {type: purchase, within: 99999999999d}}\n", "longer than a century"),
    # 309 digits and more are an infinite float: an OverflowError rounding it to milliseconds (a traceback)
    ("segments:\n  loyal:\n    rule: {event: {type: purchase, within: " + "9" * 400 + "d}}\n", "longer than a century"),
])
def test_a_wait_or_window_past_a_century_is_refused(tmp_path: Path, text: str, message: str) -> None:
    """A finite but huge delay loaded, then every profile its rule touched failed: its due time was
    past what the due index holds."""
    with pytest.raises(ConfigError, match=r"config\.yaml") as err:
        load_config(write(tmp_path, text))
    assert message in str(err.value)


def test_a_key_given_twice_in_the_config_file_is_an_error_not_a_silent_override(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys: a second ``triggers:`` section replaced the first, and
    a second segment of one name the first (found in review)."""
    from streams.config_file import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text("triggers:\n  cart_abandoned: {delay_minutes: 5}\ntriggers:\n  winback: {after_days: 30}\n")
    with pytest.raises(ConfigError, match=r"line 3.*'triggers' is given twice"):
        load_config(path)
    path.write_text("segments:\n  vip: {path: aggregates.orders, gte: 3}\n  vip: {path: aggregates.orders, gte: 9}\n")
    with pytest.raises(ConfigError, match="'vip' is given twice"):
        load_config(path)


@pytest.mark.parametrize("text", ["? [a, b]\n: 1\n", "segments:\n  {a: 1}: 2\n", "triggers: {[x]: 1}\n"])
def test_a_list_or_mapping_as_a_key_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"line .*unhashable key"):  # (was a TypeError: a traceback)
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("text", ["guardrails:\n  per_type_per_day: 2\n\x00\n", "guardrails: \x07\n"])
def test_a_control_character_in_the_config_is_a_one_line_error(capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                text: str) -> None:
    """PyYAML's ReaderError reads '... not allowed' then '  in "<unicode string>", position 34' on a line of its own."""
    monkeypatch.delenv("MAILPULSE_LOG_FORMAT", raising=False)
    monkeypatch.setenv("MAILPULSE_CONFIG", str(write(tmp_path, text)))
    events = tmp_path / "none.jsonl"
    events.write_text("")
    code = main(["resolve", "--input", str(events), "--out", str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not valid YAML: special characters are not allowed" in err, err
    assert ("line 3" if "\x00" in text else "line 1") in err


def test_a_yaml_merge_key_is_not_taken_for_a_key_given_twice(tmp_path: Path) -> None:
    from streams.config_file import load_config

    path = tmp_path / "c.yaml"
    path.write_text("scoring:\n  <<: {delay_minutes: 30}\n  idle_days: [7]\n")
    assert load_config(path).scoring.delay_minutes == 30


def test_the_readme_documents_every_setting() -> None:
    """Each field of the one settings class is named in the README by its environment variable."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    from streams.settings import Settings
    missing = [f"MAILPULSE_{name.upper()}" for name in Settings.model_fields
               if f"`MAILPULSE_{name.upper()}`" not in readme]
    assert missing == []


def test_an_alias_bomb_in_a_rule_is_refused_at_once(tmp_path: Path) -> None:
    """Nine anchors, each nine of the one before, in a custom segment's rule: 9**9 conditions, which were
    compiled for hours in gigabytes (every command that reads the config hung)."""
    leaf = "{field: {path: aggregates.total_spend, gte: 1}}"
    lines = ["segments:", "  vip:", "    rule:", "      any:", f"        - &a0 {{all: [{', '.join([leaf] * 9)}]}}"]
    lines += [f"        - &a{n} {{all: [{', '.join([f'*a{n - 1}'] * 9)}]}}" for n in range(1, 9)]
    path = write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="aliases expand it by more than"):
        load_config(path)


@pytest.mark.parametrize("text", ["segments:\n  vip:\n    rule: &r {not: *r}\n",
                                  "limits: &r {traits: 5, x: *r}\n"])
def test_an_alias_inside_its_own_anchor_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"line .*an alias refers to a value that holds it"):  # (a RecursionError)
        load_config(write(tmp_path, text))


def test_aliases_of_a_usual_config_still_load(tmp_path: Path) -> None:
    path = write(tmp_path, "triggers:\n  cart_abandoned: &t {enabled: false}\n  browse_abandoned: *t\n"
                 "  post_purchase: {<<: *t, delay_hours: 5}\n")
    config = load_config(path)
    assert not config.triggers.browse_abandoned.enabled and config.triggers.post_purchase.delay_hours == 5


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("guardrails: {per_type_per_day: true}\n", "guardrails.per_type_per_day"),
        ("guardrails: {per_profile_per_day: '5'}\n", "guardrails.per_profile_per_day"),
        ("triggers: {cart_abandoned: {delay_minutes: '30'}}\n", "triggers.cart_abandoned.delay_minutes"),
        ("triggers: {welcome: {enabled: 'no'}}\n", "triggers.welcome.enabled"),
        ("segments: {high_value: {min_spend: yes}}\n", "segments.high_value.min_spend"),
        ("scoring: {idle_days: [1, '3']}\n", "scoring.idle_days.1"),
    ],
)
def test_a_boolean_or_quoted_number_is_not_taken_for_another_type(tmp_path: Path, text: str, where: str) -> None:
    """``true`` was the number 1, ``'5'`` the number 5 and a quoted ``'no'`` false."""
    with pytest.raises(ConfigError, match=rf"config\.yaml: {where.replace('.', '[.]')}: Input should be a valid"):
        load_config(write(tmp_path, text))


def test_numbers_and_lists_of_a_usual_config_still_load(tmp_path: Path) -> None:
    text = ("scoring: {idle_days: [1, 2.5]}\ntriggers: {cart_abandoned: {delay_minutes: 45}}\n"
            "identity: {blocked_values: [null, 0, -1, guest]}\n")
    config = load_config(write(tmp_path, text))
    assert config.scoring.idle_days == (1.0, 2.5) and config.triggers.cart_abandoned.delay_minutes == 45.0
    assert config.identity.blocked_values == ("null", "0", "-1", "guest")


def test_a_bare_number_among_blocked_values_is_the_text_as_written(tmp_path: Path) -> None:
    """Blocked values are identifier texts: ``1e5`` or ``1.50`` read as a number became ``100000.0`` or
    ``1.5``, which blocked an id nobody wrote and let through the one written."""
    text = ("identity: {blocked_values: [1e5, 1.50, 0x1F, 1_000, +7, .5, 0, -1, null, guest, '2.0']}\n"
            "segments:\n  big: {rule: {field: {path: aggregates.total_spend, gte: 1e5}}}\n")
    config = load_config(write(tmp_path, text))
    assert config.identity.blocked_values == (
        "1e5", "1.50", "0x1F", "1_000", "+7", ".5", "0", "-1", "null", "guest", "2.0")
    assert config.segments.custom()["big"]["rule"]["field"]["gte"] == 100_000  # (a number elsewhere)


def test_a_config_past_its_size_bound_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    from streams.config_file import MOST_CONFIG_BYTES

    path = write(tmp_path, "identity:\n  blocked_values:\n" + "    - x\n" * (MOST_CONFIG_BYTES // 8 + 1))
    with pytest.raises(ConfigError, match=r"config\.yaml: larger than 1024 KiB"):
        load_config(path)
    with pytest.raises(ConfigError, match="/dev/zero: larger than"):  # (read without end before)
        load_config(Path("/dev/zero"))


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ('triggers: {"a\\nb": 1}\n', "triggers.a\\nb: unknown key"),
        ('segments:\n  x: {rule: {"so\\u2028me": []}}\n', "segments.x: rule.so\\u2028me: unknown condition"),
        ('segments:\n  x: {rule: {field: {path: traits.a, "gt\\rx": 1}}}\n', "rule.field.gt\\rx: unknown key"),
        ('segments:\n  x: {rule: {field: {path: traits.a, gt: 1}, "b\\nc": 1}}\n', "got keys field, b\\nc"),
    ],
)
def test_a_line_break_in_a_key_is_shown_escaped_in_the_one_line_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], text: str,
        shown: str) -> None:
    """A key is echoed in the error: with a line break in it (a quoted YAML key may hold one) the error
    came out on two lines, the second looking like a line of its own."""
    monkeypatch.setenv("MAILPULSE_CONFIG", str(write(tmp_path, text)))
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mailpulse: error: MAILPULSE_CONFIG") and err.count("\n") == 1 and shown in err, err


def test_only_true_and_false_are_booleans(tmp_path: Path) -> None:
    """YAML 1.1 reads yes, no, on and off as booleans: a segment on ``traits.country in: [DE, NO]`` held
    false for Norway (and never matched a Norwegian), and ``eq: yes`` never matched the text "yes"."""
    from streams.domain.rules.segments import compile_evaluator, compile_segments

    text = ("segments:\n  nordic: {rule: {field: {path: traits.country, in: [DK, NO, SE]}}}\n"
            "  keen: {rule: {field: {path: traits.answer, eq: yes}}}\n"
            "  switched: {rule: {field: {path: traits.vip, eq: True}}}\n"
            "guardrails: {require_consent: true, quiet_hours: {enabled: FALSE}}\n")
    config = load_config(write(tmp_path, text))
    assert config.guardrails.require_consent is True and config.guardrails.quiet_hours.enabled is False
    evaluate = compile_evaluator(compile_segments(config.segments))
    facts = {"traits": {"country": "NO", "answer": "yes", "vip": True}}
    assert {"nordic", "keen", "switched"} <= evaluate(facts, {}, 0)[0]
    assert not {"nordic", "keen"} & evaluate({"traits": {"country": False, "answer": True}}, {}, 0)[0]
    with pytest.raises(ConfigError, match=r"config\.yaml: triggers\.welcome\.enabled: Input should be a valid boolean"):
        load_config(write(tmp_path, "triggers: {welcome: {enabled: no}}\n"))


def test_numbers_are_read_as_yaml_1_2_reads_them(tmp_path: Path) -> None:
    """YAML 1.1 reads ``1e6`` and ``2.5e3`` as text (a rule's ``gte: 1e6`` compared a number with text and
    never held), ``10:30`` as the base-60 number 630 and ``02134`` as the octal 668 (a rule's ``eq`` then
    never matched the text a trait holds)."""
    from streams.domain.rules.segments import compile_evaluator, compile_segments

    text = ("segments:\n  whales: {rule: {field: {path: aggregates.total_spend, gte: 1e6}}}\n"
            "  big: {rule: {field: {path: aggregates.total_spend, gt: 2.5e3}}}\n"
            "  morning: {rule: {field: {path: traits.slot, eq: 10:30}}}\n"
            "  boston: {rule: {field: {path: traits.postcode, in: [02134, 02135]}}}\n"
            "  hex: {rule: {field: {path: traits.n, in: [0x1f, 1_000, -7]}}}\n"
            "triggers: {winback: {after_days: 1.2e2}}\n")
    config = load_config(write(tmp_path, text))
    assert config.triggers.winback.after_days == 120
    evaluate = compile_evaluator(compile_segments(config.segments))
    facts = {"aggregates": {"total_spend": 1_000_000}, "traits": {"slot": "10:30", "postcode": "02134", "n": 31}}
    assert {"whales", "big", "morning", "boston", "hex"} <= evaluate(facts, {}, 0)[0]
    facts = {"aggregates": {"total_spend": 2500}, "traits": {"slot": 630, "postcode": 668, "n": 1000}}
    assert evaluate(facts, {}, 0)[0] & {"whales", "big", "morning", "boston", "hex"} == {"hex"}
    with pytest.raises(ConfigError, match=r"guardrails\.per_type_per_day: Input should be a valid integer"):
        load_config(write(tmp_path, "guardrails: {per_type_per_day: 010}\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("guardrails: {per_type_per_day: !!int abc}\n", "line 1 not valid YAML: 'abc' cannot be read as int"),
        ("segments:\n  x: {rule: {field: {path: traits.n, gte: !!float x}}}\n",
         "line 2 not valid YAML: 'x' cannot be read as float"),
        ("segments:\n  x: {rule: {field: {path: traits.n, eq: !!bool maybe}}}\n",
         "line 2 not valid YAML: 'maybe' cannot be read as bool"),
        ("segments:\n  x: {rule: {field: {path: traits.n, gt: !!timestamp x}}}\n",
         "line 2 not valid YAML: 'x' cannot be read as timestamp"),
        ("segments:\n  x: {rule: {field: {path: traits.d, eq: 2024-13-45}}}\n",  # (a date without a tag too)
         "line 2 not valid YAML: '2024-13-45' cannot be read as timestamp"),
        ("segments:\n  x: {rule: !!set [1]}\n", "line 2 not valid YAML: expected a mapping node, but found sequence"),
        ("segments: !!map x\n", "line 1 not valid YAML: expected a mapping node, but found scalar"),
    ],
)
def test_a_value_its_tag_cannot_read_is_a_one_line_yaml_error(tmp_path: Path, text: str, message: str) -> None:
    """An explicit tag on a value it cannot read, or a date that is none (2024-13-45), stopped the load
    with a ValueError, KeyError, AttributeError or TypeError traceback."""
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert str(err.value) == f"{tmp_path / 'config.yaml'}: {message}"


@pytest.mark.parametrize(("name", "most"), [("consent", 256), ("blocks", 256), ("currencies", 1000)])
def test_a_bound_no_too_big_state_can_be_made_smaller_in_is_refused_past_what_fits(name: str, most: int) -> None:
    """Consent channels, block registrations and currencies are not made smaller when a state is too big
    to store (``profile.shrink``): a bound raised far enough (``consent: 100000``: 32 long channels per
    identify) grew a person's state past the value limit, and every later event of theirs was
    dead-lettered.  Such a bound is refused at start."""
    from pydantic import ValidationError

    from streams.domain.config import PipelineConfig

    assert PipelineConfig.model_validate({"limits": {name: most}}).limits.model_dump()[name] == most
    with pytest.raises(ValidationError, match=f"limits.{name}|{name}"):
        PipelineConfig.model_validate({"limits": {name: most + 1}})
