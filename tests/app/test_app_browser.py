"""End to end in a real browser (Playwright driving Debian's Chromium) against ``sdpo serve``: the app and one
real Celery worker as subprocesses, SQLite + the filesystem broker in a tmp data dir, the demo model that
``serve`` picks by default. Screenshots go to ``tests/artifacts/`` (git-ignored).

* bad input through the page (empty statement, malformed tests, non-numeric budget, oversize upload) shows
  an error next to the box it concerns and creates no job;
* a submitted problem's attempts appear live without reloading the page; an attempt's feedback opens; a
  second job is cancelled; both are in History and open from there;
* stopping ``serve`` stops its worker.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import func, select

from backend.db import make_engine, make_session_factory, session_scope
from backend.models import Dataset, Job, Problem, Worker
from tests.app.conftest import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]
MAX_UPLOAD = 2048
STATEMENT = "# Sum of two numbers\n\nRead two integers `a` and `b` from one line and print `a + b`."

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is absent (install Debian's chromium: apt-get install -y chromium)",
                allow_module_level=True)


class Server:
    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.data = root / "data"
        self.log_path = root / "serve.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SDPO_")}
        self.env.update({
            "SDPO_DATA_DIR": str(self.data), "SDPO_PORT": str(self.port), "SDPO_HOST": "127.0.0.1",
            "SDPO_MAX_UPLOAD_BYTES": str(MAX_UPLOAD), "SDPO_QUEUE": "gpu-browser-test",
            "SDPO_HEARTBEAT_INTERVAL_S": "1", "SDPO_HEARTBEAT_TIMEOUT_S": "60", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
        })
        self.proc: subprocess.Popen | None = None
        self.engine = None
        self.sessions = None

    def start(self, timeout: float = 180) -> None:
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "serve"], cwd=ROOT, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait(self._http_ok, timeout, "the app to answer")
        self.engine = make_engine(f"sqlite:///{self.data / 'sdpo.db'}")
        self.sessions = make_session_factory(self.engine)
        self.wait(lambda: self.worker_pids(), timeout, "the worker to register")

    def _http_ok(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"sdpo serve exited with {self.proc.returncode}:\n{self.tail()}")
        try:
            return urllib.request.urlopen(self.url, timeout=2).status == 200
        except OSError:
            return False

    def worker_pids(self) -> list[int]:
        with session_scope(self.sessions) as s:
            return list(s.scalars(select(Worker.pid)))

    def count(self, model) -> int:
        with session_scope(self.sessions) as s:
            return int(s.scalar(select(func.count(model.id))))

    def job(self, job_id: int) -> Job:
        with session_scope(self.sessions) as s:
            return s.get(Job, job_id)

    def tail(self, n: int = 80) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def wait(self, pred, timeout: float, what: str, every: float = 0.5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = pred()
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{self.tail()}")

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("serve"))
    srv.start()
    yield srv
    srv.stop()
    if srv.engine is not None:
        srv.engine.dispose()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    pg.goto(server.url)
    pg.wait_for_selector("#solve-submit")
    yield pg
    ctx.close()


def fill(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(value)


def shot(page, name: str) -> None:
    page.wait_for_timeout(800)  # let pending-update overlays fade
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def expect_message(page, elem_id: str, kind: str, text: str) -> str:
    from playwright.sync_api import expect

    loc = page.locator(f"#{elem_id} .sdpo-{kind}")
    expect(loc).to_contain_text(text, timeout=30_000)
    return loc.inner_text()


def open_advanced(page) -> None:
    page.get_by_text("Advanced (SDPO settings)").click()
    page.wait_for_selector("#solve-adv-n textarea, #solve-adv-n input")


def tab(page, name: str) -> None:
    page.click(f"button[role=tab][data-tab-id={name}]")


# ------------------------------------------------------------------------------------------------ tests
def test_bad_input_shows_an_error_and_creates_no_job(server, page):
    # 1. empty statement
    fill(page, "solve-statement", "")
    page.click("#solve-submit")
    expect_message(page, "solve-statement-message", "error", "statement: is empty")
    expect_message(page, "solve-message", "error", "Not submitted: see the message at the statement")
    shot(page, "bad_empty_statement")
    from playwright.sync_api import expect

    # 2. the form shows the defaults of the model it will use: CPU-sized for the demo model; a model folder
    #    without a checkpoint is named next to the Model box (and refused at submit, not when the job runs)
    assert page.input_value("#solve-budget textarea, #solve-budget input") == "16"
    fill(page, "solve-model", "/no/such/model")
    page.locator("#solve-model textarea, #solve-model input").first.blur()
    expect_message(page, "solve-defaults-message", "error", "model: no Hugging Face checkpoint")
    fill(page, "solve-statement", STATEMENT)
    page.click("#solve-submit")
    expect_message(page, "solve-defaults-message", "error",
                   "model: no Hugging Face checkpoint (config.json) at /no/such/model")
    expect(page.locator("#solve-statement-message")).to_be_hidden()  # the fixed error is gone
    fill(page, "solve-model", "")
    page.locator("#solve-model textarea, #solve-model input").first.blur()
    expect(page.locator("#solve-defaults-message")).to_be_hidden(timeout=30_000)
    # 3. non-numeric budget
    fill(page, "solve-budget", "ten")
    page.click("#solve-submit")
    expect_message(page, "solve-budget-message", "error", "budget: got 'ten'")
    shot(page, "bad_budget")
    # 4. malformed tests (pasted JSON whose tests have no outputs)
    fill(page, "solve-budget", "4")
    page.get_by_text("Paste JSON (problem or LiveCodeBench row)").click()
    editor = page.locator("#solve-json .cm-content")
    editor.wait_for()
    editor.fill('{"title": "t", "statement": "s", "tests": {"inputs": ["1"], "outputs": "x"}}')
    page.click("#solve-submit")
    expect_message(page, "solve-json-message", "error", "tests.outputs")
    expect(page.locator("#solve-budget-message")).to_be_hidden()
    shot(page, "bad_tests")
    # 5. an upload over SDPO_MAX_UPLOAD_BYTES
    tab(page, "train")
    page.get_by_text("Upload JSONL").click()
    big = server.root / "big.jsonl"
    big.write_text("\n".join('{"prompt": "%s", "kind": "mcq", "answer": "A"}' % ("x" * 80) for _ in range(40)))
    assert big.stat().st_size > MAX_UPLOAD
    page.locator("#train-upload input[type=file]").set_input_files(str(big))
    page.wait_for_function("() => document.querySelector('#train-upload').innerText.replace(/\\s/g, '')"
                           ".includes('big.jsonl')")
    page.click("#train-submit")
    expect_message(page, "train-dataset-message", "error", "SDPO_MAX_UPLOAD_BYTES")
    expect_message(page, "train-message", "error", "Not started: see the message at Dataset")
    shot(page, "bad_upload")
    # nothing was stored or queued (the one dataset is the built-in examples that serve registers)
    assert (server.count(Job), server.count(Problem), server.count(Dataset)) == (0, 0, 1)


def test_solve_live_attempts_feedback_cancel_and_history(server, page):
    page.evaluate("window.__noReload = 42")
    fill(page, "solve-title", "Sum of two numbers")
    fill(page, "solve-budget", "4")
    open_advanced(page)
    fill(page, "solve-adv-n", "2")
    fill(page, "solve-adv-max_new_tokens", "16")
    page.click("#solve-submit")
    first = int(re.search(r"Job (\d+) queued", expect_message(page, "solve-message", "ok", "queued")).group(1))

    # attempts appear in the table while we only wait (the timer refreshes the view; no reload)
    page.wait_for_selector("#solve-attempts .virtual-row", timeout=150_000)
    assert page.evaluate("window.__noReload") == 42
    page.locator("#solve-attempts").scroll_into_view_if_needed()
    shot(page, "solve_live_attempts")
    assert re.search(r"0/2", page.inner_text("#solve-attempts"))

    # an attempt's code and feedback
    page.click('#solve-attempts [data-testid="cell-0-2"]')
    page.wait_for_function(
        "() => document.querySelector('#solve-attempt-feedback textarea').value.length > 0")
    assert "Attempt 1 (round 0)" in page.inner_text("#solve-attempt-header")
    page.locator("#solve-attempt-feedback").scroll_into_view_if_needed()
    shot(page, "solve_attempt_feedback")

    # a second job, cancelled (queued behind the first, or running: either ends cancelled)
    fill(page, "solve-budget", "64")
    page.click("#solve-submit")
    # the view opens the new job (its "queued" message goes once it runs: read the job-id box)
    page.wait_for_function("(first) => document.querySelector('#solve-job-id input, #solve-job-id textarea')"
                           ".value !== first", arg=str(first))
    second = int(page.input_value("#solve-job-id textarea, #solve-job-id input"))
    assert second != first
    page.wait_for_selector("#solve-cancel", state="visible")
    page.click("#solve-cancel")
    page.wait_for_function("() => document.querySelector('#solve-status').innerText.includes('cancelled')",
                           timeout=120_000)
    assert server.job(second).status == "cancelled"
    shot(page, "solve_cancelled")
    assert page.evaluate("window.__noReload") == 42

    # the first job runs to its end; its view (opened from History) shows the finished run
    server.wait(lambda: server.job(first).status in ("succeeded", "failed"), 180, f"job {first} to finish")
    assert server.job(first).status == "succeeded", server.job(first).error
    tab(page, "history")
    ids = history_ids(page)
    assert str(first) in ids and str(second) in ids
    table_text = page.inner_text("#history-table")
    assert "cancelled" in table_text and "succeeded" in table_text
    shot(page, "history")
    select_job(page, first)
    page.click("#history-open")
    page.wait_for_function(f"() => document.querySelector('#solve-status').innerText.includes('Job {first}')")
    page.wait_for_function("() => document.querySelector('#solve-status').innerText.includes('succeeded')")
    assert page.locator("#solve-attempts .virtual-row").count() == 4
    page.wait_for_selector("#solve-curve g.mark-line path", state="attached")  # the discovery curve is drawn
    assert not page.locator("#solve-cancel").is_visible()  # finished jobs are read-only
    page.locator("#solve-status").scroll_into_view_if_needed()
    shot(page, "solve_finished_from_history")

    tab(page, "system")
    page.wait_for_function("() => document.querySelector('#system-health').innerText.includes('1 live')")
    shot(page, "system")


def history_ids(page) -> list[str]:
    page.wait_for_selector("#history-table .virtual-row")
    return [t.strip() for t in page.locator('#history-table [data-testid$="-0"][role=gridcell]').all_inner_texts()]


def wait_history(page, job_id: int, present: bool = True) -> None:
    """Wait until the History table shows (or no longer shows) ``job_id``."""
    page.wait_for_function(
        "([id, present]) => [...document.querySelectorAll('#history-table [role=gridcell][data-testid$=\"-0\"]')]"
        ".some(c => c.innerText.trim() === id) === present", arg=[str(job_id), present])


def select_job(page, job_id: int) -> None:
    row = history_ids(page).index(str(job_id))
    page.click(f'#history-table [data-testid="cell-{row}-0"]')
    page.wait_for_function("(id) => document.querySelector('#history-selected input, #history-selected textarea')"
                           ".value == id", arg=str(job_id))


def test_history_rerun_and_delete(server, page):
    with session_scope(server.sessions) as s:
        solved = s.scalars(select(Job.id).where(Job.status == "succeeded")).all()
        cancelled = s.scalars(select(Job.id).where(Job.status == "cancelled")).all()
    assert solved and cancelled
    tab(page, "history")
    # re-run a finished job with the same config
    select_job(page, solved[0])
    page.click("#history-rerun")
    text = expect_message(page, "history-message", "ok", f"re-run of job {solved[0]}")
    new = int(re.search(r"Job (\d+) queued", text).group(1))
    wait_history(page, new)
    old_job, new_job = server.job(solved[0]), server.job(new)
    assert new_job.config == old_job.config and new_job.problem_id == old_job.problem_id
    # delete a job: nothing happens until it is confirmed
    select_job(page, cancelled[0])
    page.click("#history-delete")
    page.wait_for_selector("#history-confirm", state="visible")
    assert "cannot be undone" in page.inner_text("#history-confirm-text")
    shot(page, "history_confirm_delete")
    assert server.job(cancelled[0]) is not None
    page.click("#history-confirm")
    expect_message(page, "history-message", "ok", f"Job {cancelled[0]} deleted")
    assert server.job(cancelled[0]) is None
    wait_history(page, cancelled[0], present=False)
    # let the re-run finish so the worker is free for the training run
    server.wait(lambda: server.job(new).status in ("succeeded", "failed"), 180, f"job {new} to finish")


def test_train_run_live_plots_checkpoints_and_compare(server, page):
    tab(page, "train")
    for elem, value in (("train-max-steps", "2"), ("train-n", "2"), ("train-max-new-tokens", "8"),
                        ("train-save-every", "1")):
        fill(page, elem, value)
    page.click("#train-submit")
    job = int(re.search(r"Job (\d+) queued", expect_message(page, "train-message", "ok", "queued")).group(1))
    page.wait_for_function("() => document.querySelector('#train-status').innerText.includes('succeeded')",
                           timeout=180_000)
    assert server.job(job).status == "succeeded", server.job(job).error
    for plot in ("reward", "loss", "length", "sdpo"):  # every live plot drew its lines
        page.wait_for_selector(f"#train-plot-{plot} g.mark-line path", state="attached")
    assert "step 2:" in page.input_value("#train-log textarea")
    assert page.locator("#train-checkpoints .virtual-row").count() == 2
    page.click("#train-ck-pick input")
    page.get_by_role("option", name="step 2 (lora)").click()
    page.click("#train-ck-zip")
    page.wait_for_function(f"() => document.querySelector('#train-ck-file').innerText.replace(/\\s/g, '')"
                           f".includes('job{job}-step2-lora.zip')")
    shot(page, "train_finished")

    tab(page, "compare")
    page.click("#compare-refresh")
    page.click("#compare-runs input")
    page.get_by_role("option", name=re.compile(f"#{job} humaneval")).click()
    page.keyboard.press("Escape")
    page.wait_for_selector("#compare-train-plot g.mark-line path", state="attached")
    shot(page, "compare")


def test_stopping_serve_stops_its_worker(server):
    pids = server.worker_pids()
    assert len(pids) == 1
    assert server.stop() is not None, "sdpo serve did not exit on SIGTERM"

    def gone() -> bool:
        try:
            os.kill(pids[0], 0)
        except ProcessLookupError:
            return True
        return False

    server.wait(gone, 30, f"worker {pids[0]} to exit")
