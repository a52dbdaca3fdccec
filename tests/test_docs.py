"""The documentation's promises: the committed config regenerates the README's run, the
README's CLI reference and figures match the code, and the public API is documented."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path

import mvsim
from mvsim import cli
from mvsim.config import Config, load_file, make_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_committed_config_is_the_demo_run() -> None:
    """`mvsim verify --config docs/demo/config.toml` (preset demo, the default) resolves to
    exactly the config recorded in docs/demo/report.json: the documented command redoes
    that run, seeds included."""
    rep = json.loads((ROOT / "docs" / "demo" / "report.json").read_text())
    recorded = Config.from_dict(rep["config"])
    cfg = make_config("demo", load_file(ROOT / "docs" / "demo" / "config.toml"))
    assert cfg == dataclasses.replace(recorded, preset="demo")
    assert "mvsim verify --config docs/demo/config.toml --ntk --out docs/demo" in README


def test_readme_figures_exist() -> None:
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert links
    for link in links:
        assert (ROOT / link).is_file(), link


def test_readme_cli_reference_lists_every_subcommand() -> None:
    sub = next(
        a for a in cli.build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"
    )
    for name in sub.choices:
        assert f"mvsim {name}" in README, f"README's CLI reference lacks `mvsim {name}`"


def test_public_api_is_documented() -> None:
    missing = [
        name
        for name in mvsim.__all__
        if (inspect.isfunction(getattr(mvsim, name)) or inspect.isclass(getattr(mvsim, name)))
        and not (getattr(mvsim, name).__doc__ or "").strip()
    ]
    assert not missing, missing


def test_readme_links_resolve() -> None:
    """Every relative link (not only images) points at a committed file or folder."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert "docs/demo/report.html" in local
    for link in local:
        assert (ROOT / link).exists(), link


def test_readme_documents_every_flag() -> None:
    sub = next(
        a for a in cli.build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"
    )
    missing = [
        f"mvsim {name} {opt}"
        for name, parser in sub.choices.items()
        for action in parser._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt not in README
    ]
    assert not missing, missing
