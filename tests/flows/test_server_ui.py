"""A real Prefect server: `gristmill serve` registers a scheduled deployment, the API triggers
it (`run_deployment`), the run completes with its artifacts, and headless Chromium finds the
run's name and an artifact title on the run's UI page (a screenshot goes to the tmp dir)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, IndexError, KeyError):
            value = None
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser(url: str, *, dump: bool = True, screenshot: Path | None = None) -> str:
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={tempfile.mkdtemp()}",
            "--virtual-time-budget=40000", "--window-size=1400,900", "--hide-scrollbars"]
    args += ["--dump-dom"] if dump else [f"--screenshot={screenshot}"]
    done = subprocess.run([*args, url], capture_output=True, text=True, timeout=180,
                          check=False)
    return done.stdout


@pytest.fixture
def server(tmp_path):
    port = free_port()
    home = tmp_path / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"}
    env.pop("PREFECT_API_URL", None)
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    prefect = Path(sys.executable).with_name("prefect")
    proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port",
                             str(port), "--analytics-off"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_for(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 120,
                 "the Prefect server")
        yield api, env
    finally:
        stop(proc)
        log.close()


def test_serve_trigger_complete_and_see_it_in_the_ui(server, small_corpus, tmp_path):
    api, env = server
    recipe = tmp_path / "served.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "served", "inputs": [str(small_corpus)], "output": str(tmp_path / "out"),
        "k": 6, "selectors": [{"method": "semdedup", "eps": 0.05},
                              {"method": "dbp", "budget": 0.5}],
        "tokenizer": {"vocab_size": 300}}))
    serve_env = {**env, "PREFECT_API_URL": api, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    serve_log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    serving = subprocess.Popen([sys.executable, "-m", "gristmill", "serve", str(recipe),
                                "--cron", "0 3 * * *"], env=serve_env, stdout=serve_log,
                               stderr=subprocess.STDOUT)
    try:
        deployment = wait_for(lambda: httpx.post(f"{api}/deployments/filter", json={
            "deployments": {"name": {"any_": ["served"]}}}, timeout=5).json()[0], 90,
            "the served deployment")
        schedules = deployment.get("schedules") or []
        assert any(s["schedule"].get("cron") == "0 3 * * *" for s in schedules), schedules

        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api}):
            run = run_deployment("curate/served", timeout=300, poll_interval=2)
        assert run.state.type.value == "COMPLETED", run.state
        found = httpx.post(f"{api}/artifacts/filter", json={
            "artifacts": {"flow_run_id": {"any_": [str(run.id)]}}}, timeout=10).json()
        keys = {a["key"] for a in found if a.get("key")}
        assert {"served-summary", "served-rows-by-domain"} <= keys
        summary = next(a for a in found if a.get("key") == "served-summary")
        assert "Rows per domain" in summary["data"]
        assert (tmp_path / "out" / "tokens" / "manifest.json").is_file()

        if chromium() is None:
            pytest.skip("chromium is not installed (.ci/run installs it)")
        page = f"{api.removesuffix('/api')}/v2/runs/flow-run/{run.id}?tab=Artifacts"
        dom = browser(page)
        assert run.name in dom, "the run's page does not show its name"
        assert "served-summary" in dom, "the run's page does not list its artifacts"
        shot = tmp_path / "flow-run.png"
        browser(page, dump=False, screenshot=shot)
        assert shot.is_file() and shot.stat().st_size > 10_000
    finally:
        stop(serving)
        serve_log.close()


def test_serve_without_a_server_says_how_to_start_one(tmp_path):
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}
    done = subprocess.run([sys.executable, "-m", "gristmill", "serve"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "no Prefect server answers" in done.stderr and "gristmill ui" in done.stderr
