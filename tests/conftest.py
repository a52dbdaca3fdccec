"""Fixtures shared by several test files."""

from __future__ import annotations

import json
import os
import tempfile

import pytest

# One persistent compilation cache for the session, set before JAX is imported so that it
# holds in-process and in every subprocess a test starts (benchmarks, sharding, resume):
# a program compiled once (a diffrax solve takes seconds) is not compiled again. It
# changes no result, only who compiles.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="mvsim-jax-"))

from mvsim import cli  # noqa: E402


@pytest.fixture(scope="session")
def tiny_verify(tmp_path_factory) -> tuple[dict, object]:
    """`mvsim verify --preset tiny --out DIR`, run once per session: (report.json's dict,
    DIR). The verify and the report.html tests read it; a test that writes must copy it."""
    out = tmp_path_factory.mktemp("verify")
    rc = cli.main(["verify", "--preset", "tiny", "--out", str(out), "--no-progress"])
    assert rc == 0
    return json.loads((out / "report.json").read_text()), out
