"""Fixtures shared by several test files."""

from __future__ import annotations

import json

import pytest

from mvsim import cli


@pytest.fixture(scope="session")
def tiny_verify(tmp_path_factory) -> tuple[dict, object]:
    """`mvsim verify --preset tiny --out DIR`, run once per session: (report.json's dict,
    DIR). The verify and the report.html tests read it; a test that writes must copy it."""
    out = tmp_path_factory.mktemp("verify")
    rc = cli.main(["verify", "--preset", "tiny", "--out", str(out), "--no-progress"])
    assert rc == 0
    return json.loads((out / "report.json").read_text()), out
