"""report.html and optuna-dashboard in a real browser: Debian's chromium, headless, driven by its own flags.

The report is opened from file:// with every request sent to a dead proxy (--proxy-server=127.0.0.1:9,
loopback included) and Chromium's net log recorded: no request the page starts may appear there. A copy
of the report with a checker script first in <head> reports, after the load event, every <img> that did
not decode (naturalWidth 0) and every console.error/console.warn or error event; --dump-dom returns it.
A screenshot of the unmodified report must not be blank. A page with a broken image, a console error and
an outside request shows each check can fail. optuna-dashboard's study page draws its learning-curve
chart for single-objective studies only (its bundle: directions.length === 1 && has_intermediate_values),
so for hgsearch's two-objective studies we check its API's intermediate values and its trial page.

Skipped with the reason when chromium is missing, a failure in CI (HGSEARCH_CI=1: .ci/run installs it).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hgsearch.config import RunConfig
from hgsearch.results.analysis import analyze
from hgsearch.results.report import write_report
from hgsearch.search import run as search
from hgsearch.store import schema

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Heartbeat of storage")]

CHECK_ID = "hgsearch-browser-check"
# First in <head>, so it sees everything the page does; its verdict goes into the DOM for --dump-dom.
CHECKER = """<script>
window.__problems = [];
for (const level of ["error", "warn"]) {
  const original = console[level];
  console[level] = (...args) => {
    window.__problems.push(level + ": " + args.join(" "));
    original.apply(console, args);
  };
}
window.addEventListener("error", e => window.__problems.push("error event: " +
  (e.message || (e.target && (e.target.currentSrc || e.target.src || e.target.tagName)) || "?").slice(0, 80)), true);
window.addEventListener("load", () => {
  const images = [...document.images];
  const pre = document.createElement("pre");
  pre.id = "CHECK_ID";
  pre.textContent = JSON.stringify({images: images.length, problems: window.__problems,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src.slice(0, 60))});
  document.body.appendChild(pre);
});
</script>""".replace("CHECK_ID", CHECK_ID)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("HGSEARCH_CI") == "1":
            pytest.fail("chromium is not installed, but this is CI (HGSEARCH_CI=1): setup.sh must install it")
        pytest.skip("no chromium: `apt-get install chromium` (Debian) to run the real-browser checks")
    return path


def headless(chromium: str, url: str, work: Path, *flags: str, offline: bool = True) -> tuple[str, list[str]]:
    """(the DOM after load, URLs of the requests the page started) from one headless Chromium run."""
    work.mkdir(parents=True, exist_ok=True)
    netlog = work / "net.json"
    cmd = [chromium, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={work / 'profile'}", f"--log-net-log={netlog}", "--virtual-time-budget=5000",
           "--proxy-server=127.0.0.1:9"]  # a dead proxy: any request that would leave fails here
    if offline:
        cmd.append("--proxy-bypass-list=<-loopback>")  # loopback through the dead proxy too
    if os.geteuid() == 0:
        cmd.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox (CI containers)
    res = subprocess.run([*cmd, *flags, url], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout, page_requests(netlog)


def page_requests(netlog: Path) -> list[str]:
    """URLs of the requests a page started (Chromium's own background requests have no origin)."""
    text = netlog.read_text()
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # cut off at exit: close the event list
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    begun = [e["params"] for e in log["events"] if e["type"] == start and "url" in e.get("params", {})]
    return [p["url"] for p in begun if p.get("initiator") != "not an origin"]


def check_page(chromium: str, page: Path, work: Path) -> tuple[dict, list[str]]:
    """(the checker's verdict, outside requests) for page opened offline from file://."""
    copy = page.with_name(f".checked-{page.name}")
    copy.write_text(page.read_text().replace("<head>", "<head>" + CHECKER, 1))
    try:
        dom, requests = headless(chromium, copy.as_uri(), work, "--dump-dom")
    finally:
        copy.unlink()
    found = re.search(rf'<pre id="{CHECK_ID}">(.*?)</pre>', dom, re.S)
    assert found, f"the checker did not run: {dom[:300]}"
    return json.loads(html.unescape(found.group(1))), [u for u in requests if not u.startswith(("file:", "data:"))]


def screenshot(chromium: str, page: Path, work: Path) -> np.ndarray:
    shot = work / "shot.png"
    headless(chromium, page.as_uri(), work, f"--screenshot={shot}", "--window-size=1280,2400")
    return np.asarray(Image.open(shot).convert("RGB"))


def blank(pixels: np.ndarray) -> bool:
    return len(np.unique(pixels.reshape(-1, 3), axis=0)) <= 1


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, tiny_idx: Path) -> tuple[RunConfig, Path]:
    """A tiny finished study (no pruning: every trial COMPLETE with its curve) and its report."""
    root = tmp_path_factory.mktemp("browser")
    cfg = RunConfig(budget=100_000, dataset="idx", data_dir=str(tiny_idx), family="both", trials=2, epochs=3,
                    results_dir=str(root / "results"), study="b", device="cpu", pruning="none")
    search.run_search(cfg)
    an = analyze(cfg.study_name, cfg.storage_url, data_dir=str(tiny_idx), device="cpu")
    return cfg, Path(write_report(an, cfg.study_dir))


@pytest.fixture(scope="module")
def tiny_idx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import make_idx_dataset

    return make_idx_dataset(tmp_path_factory.mktemp("tinyidx"))


def test_the_checks_catch_a_broken_page(chromium, tmp_path):
    """A page with a broken image, a console error and an outside request fails each check; a blank one is blank."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><title>bad</title></head><body><img alt="gone" src="data:image/png;'
                    'base64,iVBORw0KGgo="><img alt="remote" src="http://example.com/x.png">'
                    '<script>console.error("boom")</script></body></html>')
    verdict, outside = check_page(chromium, page, tmp_path / "w1")
    assert verdict["broken"] == ["gone", "remote"] and "error: boom" in verdict["problems"]
    assert outside == ["http://example.com/x.png"]
    page.write_text("<!DOCTYPE html><html><head></head><body></body></html>")
    assert blank(screenshot(chromium, page, tmp_path / "w2"))


def test_report_opens_offline_with_every_image_decoded_and_no_console_error(chromium, study, tmp_path):
    _, report = study
    verdict, outside = check_page(chromium, report, tmp_path / "check")
    assert verdict["images"] >= 3 and verdict["broken"] == [], verdict  # frontier, scaling, curves, samples
    assert verdict["problems"] == [] and outside == [], (verdict, outside)
    pixels = screenshot(chromium, report, tmp_path / "shot")
    assert not blank(pixels)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # figures drawn, not one flat colour


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def dashboard(study, tmp_path_factory):
    """optuna-dashboard on a loopback port, serving the study's SQLite file."""
    exe = Path(sys.executable).with_name("optuna-dashboard")
    if not exe.exists():
        if os.environ.get("HGSEARCH_CI") == "1":
            pytest.fail("optuna-dashboard is not installed, but this is CI: it is in the [test] extra")
        pytest.skip("no optuna-dashboard: pip install -e '.[test]'")
    cfg, _ = study
    port = _free_port()
    log = tmp_path_factory.mktemp("dashboard") / "log.txt"
    with log.open("w") as out:
        proc = subprocess.Popen([str(exe), cfg.storage_url, "--host", "127.0.0.1", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(f"{base}/api/meta")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_dashboard_shows_each_trials_learning_curve(chromium, study, dashboard, tmp_path):
    """The API gives every COMPLETE trial its curve as intermediate values; the trial page lists them."""
    cfg, _ = study
    studies = {s["study_name"]: s for s in _get(f"{dashboard}/api/studies")["study_summaries"]}
    sid = studies["b.hourglass"]["study_id"]
    detail = _get(f"{dashboard}/api/studies/{sid}?after=0")
    assert detail["has_intermediate_values"] and len(detail["directions"]) == 2
    trials = [t for t in detail["trials"] if t["state"] == "Complete"]
    assert len(trials) == 2
    for t in trials:
        curve = json.loads(next(a["value"] for a in t["user_attrs"] if a["key"] == schema.CURVE_KEY))
        assert [(v["step"], v["value"]) for v in t["intermediate_values"]] == [(i + 1, c) for i, c in
                                                                             enumerate(curve)]
    dom, requests = headless(chromium, f"{dashboard}/dashboard/studies/{sid}/trials", tmp_path, "--dump-dom",
                             offline=False)
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
    assert "Intermediate Values" in text, text[:2000]
    first = trials[0]["intermediate_values"]
    assert all(f"{v['step']} {v['value']}" in re.sub(r"\s+", " ", text) for v in first), text[:3000]
    assert all(u.startswith(dashboard) for u in requests), requests  # the dashboard needs nothing outside
