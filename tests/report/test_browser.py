"""The HTML report in a real browser: headless Chromium loads it with every image decoded and no
error, with a Content-Security-Policy that blocks anything not embedded in the page.

Skipped when no Chromium is installed, unless SEQEDIT_REQUIRE_BROWSER=1 (CI), where a missing
browser fails. SEQEDIT_BROWSER names the binary if it is not chromium/chromium-browser/
google-chrome on PATH. Run alone: SEQEDIT_REQUIRE_BROWSER=1 python -m pytest tests/report -k browser
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from seqedit import report

# Put into a copy of the page only: the report itself has no script. The CSP allows what a
# self-contained page needs (inline style, data: images) and this probe; any other load is
# blocked and reported.
PROBE = """<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:;
 style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<script>
const seen = [];
window.addEventListener('error', e => seen.push('error: ' + (e.message || (e.target && e.target.src)
  || e.type)), true);
document.addEventListener('securitypolicyviolation', e => seen.push('blocked: ' + e.blockedURI));
const consoleError = console.error;
console.error = (...args) => { seen.push('console: ' + args.join(' ')); consoleError(...args); };
window.addEventListener('load', () => {
  const out = document.createElement('pre');
  out.id = 'seqedit-check';
  out.textContent = JSON.stringify({errors: seen, images: [...document.images].map(
    i => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}))});
  document.body.appendChild(out);
});
</script>"""


def browser() -> str:
    named = os.environ.get("SEQEDIT_BROWSER")
    found = named or next((shutil.which(n) for n in ("chromium", "chromium-browser",
                                                       "google-chrome") if shutil.which(n)), None)
    if found is None:
        if os.environ.get("SEQEDIT_REQUIRE_BROWSER") == "1":
            pytest.fail("SEQEDIT_REQUIRE_BROWSER=1 but no Chromium found (chromium, "
                        "chromium-browser, google-chrome on PATH, or SEQEDIT_BROWSER)")
        pytest.skip("no Chromium on PATH (set SEQEDIT_REQUIRE_BROWSER=1 to make this a failure)")
    return found


def headless(binary: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    # A profile of its own, so the test never touches (or waits on) a user's browser profile.
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu",
                           f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
                           "--virtual-time-budget=10000", *args],
                          capture_output=True, text=True, timeout=120)


def check(binary: str, page, tmp_path) -> dict:
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    done = headless(binary, tmp_path, "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="seqedit-check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the page never finished loading:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_report_renders_in_chromium(runs, tmp_path):
    binary = browser()
    paths = report.write([runs["memit"], runs["memit-b1"]], tmp_path / "report")
    result = check(binary, paths["html"], tmp_path)
    assert result["errors"] == []
    assert len(result["images"]) == len(paths["plots"]) > 0
    assert all(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in result["images"])
    shot = tmp_path / "screenshot.png"
    headless(binary, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400",
             paths["html"].as_uri())
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_the_check_sees_a_broken_image_and_an_external_load(tmp_path):
    binary = browser()
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
                    '<img src="data:image/png;base64,AAAA"><img src="https://example.org/x.png">'
                    "</body></html>")
    result = check(binary, page, tmp_path)
    assert [i["width"] for i in result["images"]] == [0, 0]
    assert any(e.startswith("blocked: https://example.org") for e in result["errors"])
