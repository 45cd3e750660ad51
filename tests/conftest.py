import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def run_cli():
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from danceopd.cli import main

    def _run(args, capsys=None):
        return main([str(a) for a in args])

    return _run
