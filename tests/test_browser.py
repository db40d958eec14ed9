"""End to end in a real browser: JupyterLab + ipywidgets front end + the RoutingExplorer of notebook 01.

A headless kernel (tests/test_notebooks.py) cannot see a broken widget front end, so this test starts JupyterLab
headless on a free loopback port, opens a copy of ``01_what_is_an_fff`` in Debian's Chromium driven by Playwright,
runs all cells, moves the x₁ slider of the explorer, and checks that the rendered figure changes.

Needs the system browser ``/usr/bin/chromium`` (``apt-get install chromium``; Playwright's own browser download
is not used), the ``playwright`` Python package and JupyterLab; the test skips, saying which is missing, otherwise.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_what_is_an_fff.ipynb"
CHROMIUM = os.environ.get("FFFCPU_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _requirements():
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no browser at {CHROMIUM}: apt-get install chromium (or set FFFCPU_CHROMIUM)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
    pytest.importorskip("jupyterlab", reason="JupyterLab is not installed: pip install jupyterlab")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed: pip install ipykernel")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on a free loopback port, serving a temporary copy of notebook 01."""
    _requirements()
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)  # the browser may save the notebook: never the repo's copy
    port, token = _free_port(), "fffcpu-browser-test"
    env = dict(os.environ, FFFCPU_QUICK="1", JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    root_flag = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []  # CI containers run as root
    command = [sys.executable, "-m", "jupyterlab", *root_flag, "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail("JupyterLab did not start:\n" + (tmp_path / "jupyterlab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield {"base": base, "token": token, "log": tmp_path / "jupyterlab.log"}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_slider_changes_the_rendered_figure(jupyterlab, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    url = f"{jupyterlab['base']}/lab/tree/{NOTEBOOK.name}?token={jupyterlab['token']}&reset"
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(120_000)
            page.goto(url)
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", state="attached")
            # JupyterLab may ask which kernel to start: accept its proposal (the notebook's python3)
            try:
                page.locator(".jp-Dialog .jp-mod-accept").click(timeout=20_000)
            except PlaywrightTimeout:
                pass
            # the kernel must be ready before running anything
            page.locator(".jp-StatusBar-TextItem", has_text="Idle").first.wait_for(timeout=120_000)

            # Run > Run All Cells
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            # the explorer's figure appears once its cell has run
            image = page.locator(".jp-OutputArea-output .widget-image").first
            try:
                image.wait_for(state="visible", timeout=180_000)
            except Exception:
                page.screenshot(path=str(tmp_path / "no-widget.png"), full_page=True)
                outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
                raise AssertionError(f"the explorer never appeared (screenshot {tmp_path / 'no-widget.png'}); "
                                     f"outputs: {[o[:300] for o in outputs]}") from None
            page.wait_for_function("() => document.querySelector('.widget-image').naturalWidth > 0")
            image.scroll_into_view_if_needed()
            before_src = image.get_attribute("src")
            before_png = image.screenshot()

            # move the x₁ slider: type a new value into its readout and press Enter
            slider = page.locator(".widget-hslider", has_text="x₁").first
            readout = slider.locator(".widget-readout")
            readout.click()
            page.keyboard.press("Control+A")
            page.keyboard.type("-1.2")
            page.keyboard.press("Enter")

            page.wait_for_function(
                "(old) => { const img = document.querySelector('.widget-image'); "
                "return img && img.getAttribute('src') !== old && img.naturalWidth > 0; }",
                arg=before_src, timeout=60_000)
            assert readout.inner_text().strip().replace("\u2212", "-") in ("-1.20", "-1.2")  # readout: U+2212
            time.sleep(0.3)  # let the new image paint
            after_png = image.screenshot()
            assert after_png != before_png, "the figure did not change after moving the slider"
            status = page.locator(".widget-html-content", has_text="x = (-1.20").first
            status.wait_for(state="visible", timeout=30_000)
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
            assert not tracebacks, tracebacks
        finally:
            browser.close()
