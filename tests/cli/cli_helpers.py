"""Helpers for the CLI tests (imported by name: tests/cli is on sys.path under pytest's default import mode)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def assert_one_line_error(result: CliResult, *fragments: str) -> None:
    """Exit code 2, a single ``featurelens: error:`` line on stderr, no traceback, containing ``fragments``."""
    assert result.code == 2, (result.code, result.err)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("featurelens: error: "), lines[0]
    assert "Traceback" not in result.err
    for f in fragments:
        assert f.lower() in lines[0].lower(), (f, lines[0])
