"""Fixtures for CLI tests: run the command in-process and capture exit code, stdout and stderr."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import CliResult
from torch import nn


@pytest.fixture
def cli(capsys):
    """``cli("explain", "a.jpg", ...)`` → :class:`CliResult` of ``featurelens.cli.main.main``."""
    from featurelens.cli.main import main

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse errors
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def coffee_file(tmp_path_factory, photos):
    d = tmp_path_factory.mktemp("coffee")
    path = d / "coffee.jpg"
    photos["coffee"].save(path, quality=95)
    return path


@pytest.fixture(scope="session")
def odd_models(tmp_path_factory):
    """Checkpoints that do not fit CAM: no FC head, no conv layer (pickled), and a TorchScript one."""
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    no_fc = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    no_conv = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))
    torch.save(no_fc, d / "no_fc.pt")
    torch.save(no_conv, d / "no_conv.pt")
    torch.save(no_conv.state_dict(), d / "state_dict.pt")
    torch.jit.save(torch.jit.script(no_fc), d / "scripted.pt")
    return d
