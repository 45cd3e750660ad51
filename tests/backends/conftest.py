import json

import pytest


@pytest.fixture(scope="session")
def pipes(tmp_path_factory):
    """Tiny random-weight SD3 / Z-Image / FLUX.1 Kontext pipelines with T2I and edit teachers (built once)."""
    pytest.importorskip("diffusers")
    from tinypipes import build_all

    root = tmp_path_factory.mktemp("pipes")
    specs = build_all(root)
    (root / "specs.json").write_text(json.dumps(specs))
    return specs
