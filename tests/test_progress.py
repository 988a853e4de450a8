"""Long work reports progress in plain lines when stderr is not a terminal (logs, CI, Ray job logs)."""

from __future__ import annotations

import io

import pytest

from pipeline.progress import PlainLines, progress_bar


def test_plain_lines_at_most_every_interval_and_a_last_one() -> None:
    out = io.StringIO()
    bar = PlainLines(3, "build", "models", out, interval=0.0)
    bar.set_postfix_str("failed 0")
    bar.update(1)
    bar.update(1)
    quiet = PlainLines(3, "train", "models", out, interval=3600.0)
    quiet.update(2)
    with bar:
        bar.update(1)
    quiet.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" after ")[0] for line in lines] == ["build: 1/3 models", "build: 2/3 models",
                                                             "build: 3/3 models", "train: 2/3 models"]
    assert lines[0].endswith(", failed 0")


def test_progress_bar_is_plain_without_a_terminal(capsys: pytest.CaptureFixture) -> None:
    bar = progress_bar(2, "build", "models", enabled=True)  # pytest's captured stderr is not a TTY
    assert isinstance(bar, PlainLines)
    bar.update(2)
    bar.close()
    assert capsys.readouterr().err.startswith("build: 2/2 models after")
    assert not isinstance(progress_bar(2, "build", "models", enabled=False), PlainLines)
