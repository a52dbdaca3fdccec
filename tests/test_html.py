"""report.html: one self-contained file per run, complete, and rendered by a real browser.

The browser checks run headless Chromium on the tiny run's page. Without Chromium they
skip, saying why; under CI=true they fail instead, so CI cannot pass without them
(.ci/run installs Debian's chromium).
"""

from __future__ import annotations

import html as html_lib
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from mvsim import cli, html_report, plots

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _page(out: Path) -> str:
    return (out / "report.html").read_text(encoding="utf-8")


def _ids(page: str) -> list[str]:
    return re.findall(r'\bid="([^"]+)"', page)


# --- the file itself ------------------------------------------------------------------------


def test_report_html_needs_no_network_and_no_script(tiny_verify) -> None:
    page = _page(tiny_verify[1])
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "@import" not in page and "<iframe" not in page.lower()
    # Nothing a browser would fetch: every src/href is a fragment or inline data.
    for attr, url in re.findall(r'\b(src|href)="([^"]*)"', page):
        assert url.startswith(("#", "data:")), (attr, url)
    assert not re.search(r"url\(\s*['\"]?(?!#|data:)", page)


def test_every_figure_is_inline_with_a_caption(tiny_verify) -> None:
    rep, out = tiny_verify
    page = _page(out)
    stems = sorted(p.stem for p in (out / "figures").glob("*.svg"))
    assert len(stems) >= 8
    assert page.count("<svg") == len(stems)
    for stem in stems:
        block = re.search(rf'<figure id="figure-{stem}"[^>]*>(.*?)</figure>', page, re.S)
        assert block, stem
        assert "<svg" in block.group(1) and "<figcaption>" in block.group(1)
        assert len(html_report.caption(stem)) > 40, stem
        assert html_report.caption(stem) in html_lib.unescape(block.group(1))


def test_ids_are_unique_and_every_reference_resolves(tiny_verify) -> None:
    """Ten matplotlib SVGs reuse their ids ("figure_1", clip paths): inlined in one page
    they are prefixed, so no id repeats and every url(#…) / href="#…" finds its target."""
    page = _page(tiny_verify[1])
    ids = _ids(page)
    assert len(ids) == len(set(ids))
    refs = set(re.findall(r"url\(#([^)]+)\)", page)) | set(re.findall(r'href="#([^"]+)"', page))
    assert refs and refs <= set(ids), refs - set(ids)


def test_the_page_holds_the_whole_report(tiny_verify) -> None:
    rep, out = tiny_verify
    page = _page(out)
    text = html_lib.unescape(re.sub(r"<[^>]+>", " ", page))
    cfg = rep["config"]
    for label, value in [("preset", rep["preset"]), ("k", str(cfg["data"]["k"])),
                         ("seeds", str(cfg["verify"]["seeds"])), ("jax", rep["jax_version"]),
                         ("mvsim", rep["mvsim_version"]), ("date", rep["created"])]:  # fmt: skip
        assert re.search(rf"<th scope=\"row\">{label}</th><td>{re.escape(value)}", page), label
    assert rep["backend"] in text and str(rep["machine"]["cpus"]) in text
    for c in rep["claims"]:
        row = re.search(rf'<tr id="claim-{c["id"]}">(.*?)</tr>', page, re.S).group(1)
        assert f'class="verdict {c["verdict"]}">{c["verdict"]}<' in row  # word and colour
        assert f"{c['error_over_mu']:.4f}" in row and f"{c['ci95'][0]:.4f}" in row
        assert c["reason"] in html_lib.unescape(page)
        if "control_error_over_mu" in c:
            assert f"{c['control_error_over_mu']:.4f}μ" in text
    assert f"{rep['mechanism']['frac_one_view']:.3f}" in text
    for section, fields in cfg.items():
        if isinstance(fields, dict):
            for name in fields:
                assert f"<code>{name}</code>" in page, (section, name)
    assert repr(cfg["data"]["mu"]) in text  # the config as it is, every digit
    for stage in rep["timing"]:
        assert f'<th scope="row">{stage}</th>' in page


def test_plot_report_rebuilds_the_same_page_from_the_json(tiny_verify, tmp_path) -> None:
    """`mvsim plot-report DIR/report.json` redraws the figures and the page from the JSON
    alone, byte for byte what `verify --out` wrote."""
    _, out = tiny_verify
    shutil.copy(out / "report.json", tmp_path / "report.json")
    assert cli.main(["plot-report", str(tmp_path / "report.json")]) == 0
    assert _page(tmp_path) == _page(out)
    assert cli.main(["plot-report", str(tmp_path / "report.json"), "--html",
                     str(tmp_path / "elsewhere.html")]) == 0  # fmt: skip
    assert (tmp_path / "elsewhere.html").read_text(encoding="utf-8") == _page(out)


def test_an_old_report_without_a_date_or_mechanism_data_still_renders(tmp_path) -> None:
    """A report written before `created` existed (the committed demo run with the field
    removed): its page says the date is not recorded, and shows its NTK table and
    verdicts."""
    rep = json.loads((ROOT / "docs" / "demo" / "report.json").read_text())
    del rep["created"]
    paths = plots.all_figures(rep, tmp_path / "figures")
    page = html_report.render_verify(rep, paths)
    assert "not recorded" in page
    for name, v in ((n, d["verdict"]) for n, d in rep["ntk"]["verdicts"].items()):
        assert re.search(rf"<code>{name}</code> <span class=\"verdict {v}\">{v}</span>", page)
    assert "infinite-width NTK" in page


def test_experiment_pages(tmp_path) -> None:
    """Each committed experiment report gets its page from the JSON alone: its table, its
    verdicts, its rows and its figure."""
    for name in ("dropping", "gaussian", "theory-scaling"):
        d = tmp_path / name
        d.mkdir()
        shutil.copy(ROOT / "docs" / "experiments" / name / "report.json", d / "report.json")
        assert cli.main(["plot-report", str(d / "report.json")]) == 0
        rep, page = json.loads((d / "report.json").read_text()), _page(d)
        assert f"mvsim experiment {name}" in page and page.count("<svg") == 1
        assert "<script" not in page
        assert page.count("<tr>") >= len(rep["rows"])
        for c in rep.get("claims", []):
            assert f'<code>{c["id"]}</code> <span class="verdict {c["verdict"]}">' in page


def test_the_demo_run_has_its_page_and_the_readme_shows_it() -> None:
    """docs/demo/report.html is the committed demo report's page (`mvsim plot-report
    docs/demo/report.json`); the README links it and shows a screenshot of it."""
    rep = json.loads((ROOT / "docs" / "demo" / "report.json").read_text())
    page = (ROOT / "docs" / "demo" / "report.html").read_text(encoding="utf-8")
    for c in rep["claims"]:
        row = re.search(rf'<tr id="claim-{c["id"]}">(.*?)</tr>', page, re.S).group(1)
        assert f'class="verdict {c["verdict"]}">{c["verdict"]}<' in row
    assert page.count("<svg") == len(list((ROOT / "docs" / "demo" / "figures").glob("*.svg")))
    assert "](docs/demo/report.html)" in README
    assert "![" in README and "](docs/demo/report.png)" in README
    assert _png_size(ROOT / "docs" / "demo" / "report.png")[0] >= 1000


def test_the_templates_ship_with_the_package() -> None:
    """pyproject's package-data globs cover every template, so an installed (non-editable)
    mvsim can render its pages."""
    import fnmatch
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["mvsim"]
    templates = [p.relative_to(ROOT / "mvsim").as_posix()
                 for p in (ROOT / "mvsim" / "templates").iterdir()]  # fmt: skip
    assert {"templates/verify.html.j2", "templates/base.html.j2"} <= set(templates)
    for t in templates:
        assert any(fnmatch.fnmatch(t, g) for g in globs), t


# --- in a real browser --------------------------------------------------------------------

_MEASURE = """<script>
(() => {
  const rect = (el) => { const r = el.getBoundingClientRect(); return [r.width, r.height]; };
  const out = {
    viewport: document.documentElement.clientWidth,
    scrollWidth: document.documentElement.scrollWidth,
    figures: [...document.querySelectorAll("figure")].map((f) => {
      const svg = f.querySelector("svg");
      const vb = svg.viewBox.baseVal;
      return {id: f.id, size: rect(svg), viewBox: [vb.width, vb.height]};
    }),
    claims: Object.fromEntries([...document.querySelectorAll("tr[id^=claim-]")]
      .map((tr) => [tr.id.slice(6), tr.innerText])),
    lead: (() => {
      const box = (el) => {
        const r = el.getBoundingClientRect();
        return [r.left, r.top, r.right, r.bottom];
      };
      const table = document.querySelector("table.claims");
      const fig = document.getElementById("figure-error_curves");
      const wrap = table.parentElement;
      return {table: box(table), figure: fig ? box(fig) : null,
              clipped: wrap.scrollWidth > wrap.clientWidth + 1,
              readings: box(document.getElementById("readings"))};
    })(),
  };
  const pre = document.createElement("pre");
  pre.id = "mvsim-measure";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    reason = "Chromium is not installed (Debian: apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; under CI=true the browser check of report.html must run")
    pytest.skip(reason)


def _run_chromium(browser: str, tmp: Path, *args: str) -> str:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}", *args]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def test_chromium_renders_the_page(tiny_verify, tmp_path) -> None:
    """Headless Chromium at a 1280-px viewport: every claim's id and verdict is in the
    rendered text, every figure has a non-zero size with its own aspect ratio, nothing
    overflows horizontally, and a screenshot is written. The measuring script goes into
    a test-only copy; the report itself has none."""
    browser = _chromium()
    rep, out = tiny_verify
    page = _page(out)
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _MEASURE + "\n</body>"), encoding="utf-8")
    dom = _run_chromium(browser, tmp_path, "--window-size=1280,900", "--dump-dom",
                        probe.as_uri())  # fmt: skip
    found = re.search(r'<pre id="mvsim-measure">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    m = json.loads(html_lib.unescape(found.group(1)))

    assert m["viewport"] == 1280
    assert m["scrollWidth"] <= 1280, m["scrollWidth"]
    stems = sorted(p.stem for p in (out / "figures").glob("*.svg"))
    assert sorted(f["id"] for f in m["figures"]) == [f"figure-{s}" for s in stems]
    for f in m["figures"]:
        (w, h), (vw, vh) = f["size"], f["viewBox"]
        assert w > 100 and h > 50, f
        assert abs(h / w - vh / vw) < 0.02 * vh / vw, f  # scaled, not squashed
    assert set(m["claims"]) == {c["id"] for c in rep["claims"]}
    for c in rep["claims"]:
        assert c["id"] in m["claims"][c["id"]] and c["verdict"] in m["claims"][c["id"]]

    # the error curves follow the verdict table, whose every column shows, before the
    # two readings; on a wide screen (below) they sit beside it
    lead = m["lead"]
    assert not lead["clipped"] and lead["figure"] is not None
    assert lead["table"][3] <= lead["figure"][1] + 1 and lead["figure"][3] <= lead["readings"][1]
    dom = _run_chromium(browser, tmp_path, "--window-size=1700,900", "--dump-dom",
                        probe.as_uri())  # fmt: skip
    found = re.search(r'<pre id="mvsim-measure">(.*?)</pre>', dom, re.S)
    wide = json.loads(html_lib.unescape(found.group(1)))["lead"]
    assert wide["figure"][0] >= wide["table"][2] and wide["figure"][1] < wide["table"][3], wide

    shot = tmp_path / "report.png"
    _run_chromium(browser, tmp_path, "--window-size=1280,2000", f"--screenshot={shot}",
                  (out / "report.html").as_uri())  # fmt: skip
    assert _png_size(shot) == (1280, 2000)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception),
                                         (None, pytest.skip.Exception)])  # fmt: skip
def test_without_chromium_the_browser_check_skips_but_fails_under_ci(monkeypatch, ci, outcome):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="Chromium is not installed"):
        _chromium()
