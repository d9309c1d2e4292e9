"""The first click, in a real browser (Playwright driving Debian's Chromium) against ``sdpo serve`` on a fresh
data dir with ``make run``'s defaults (the committed demo model, the built-in example problems, SQLite, the
folder broker, one worker): pick an example problem, press Solve with the form's defaults, see the first attempt,
open it and see its raw response, feedback, the teacher's context and the per-token view; cancel a second job
while it generates and see ``cancelled`` within 10 s; open the first job from History and see the same.
Screenshots go to ``tests/artifacts/`` (git-ignored); the times it measured are printed.

The problem is picked by its label in the Solve page's picker (``PICK``): a built-in example the demo model does
not solve in its first round (bench/first_click.py), so that round is distilled. The demo model ends its
programs within a few dozen tokens; the second job, which must still be generating when it is cancelled, runs
on the tiny random model (which rarely stops) with long attempts."""

from __future__ import annotations

import json
import re
import time

import pytest

from backend.db import session_scope
from backend.models import Attempt
from tests.app.test_app_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, Server, fill, shot

pytestmark = pytest.mark.slow

# The picker entry to solve (a substring of its label): a built-in example.
PICK = "Count the vowels"
# Seconds from pressing Solve to the first attempt on screen, a bound for 2 loaded CPU cores (the first round of
# the CPU-sized defaults: n = 4 attempts of up to 384 tokens, then the sandbox).
FIRST_ATTEMPT_S = 150
# Seconds from pressing Cancel while the job generates to `cancelled` on screen.
CANCEL_S = 10
# The second job generates rounds of this many attempts of up to this many tokens, so that it is still
# generating when cancelled (a round ends when its longest attempt does; the tiny model rarely stops early).
LONG_N = 16
LONG_TOKENS = 4000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("first-click"))
    for key in ("SDPO_MAX_UPLOAD_BYTES", "SDPO_HEARTBEAT_INTERVAL_S", "SDPO_HEARTBEAT_TIMEOUT_S"):
        srv.env.pop(key)  # make run's defaults
    from sdpo.tiny import make_tiny_model

    srv.tiny = make_tiny_model(srv.data / "models" / "tiny", seed=0)  # the second job's model
    srv.start()
    yield srv
    srv.stop()
    if srv.engine is not None:
        srv.engine.dispose()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        pg = b.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        pg.set_default_timeout(30_000)
        pg.goto(server.url)
        pg.wait_for_selector("#solve-submit")
        yield pg
        b.close()


def status_text(page) -> str:
    return page.inner_text("#solve-status")


def wait_status(page, text: str, timeout_s: float) -> float:
    """Wait until the job's status line shows ``text``; return the seconds it took."""
    t0 = time.monotonic()
    page.wait_for_function(f"() => document.querySelector('#solve-status').innerText.includes({json.dumps(text)})",
                           timeout=timeout_s * 1000)
    return time.monotonic() - t0


def pick(page, label: str) -> None:
    page.click("#solve-picker input")
    page.get_by_role("option", name=re.compile(re.escape(label))).first.click()
    page.wait_for_function("() => document.querySelector('#solve-picker-message').innerText.includes('Loaded')")


def open_attempt(page, row: int) -> None:
    page.click(f'#solve-attempts [data-testid="cell-{row}-0"]')
    page.wait_for_function(f"() => document.querySelector('#solve-attempt-header').innerText"
                           f".includes('Attempt {row + 1} ')")


def wait_teacher_view(page) -> None:
    """The selected attempt's teacher context and per-token view (recorded before its round's update)."""
    page.wait_for_function("() => document.querySelectorAll('#solve-attempt-tokens .sdpo-tok').length > 0",
                           timeout=120_000)


def test_first_click_solve_inspect_cancel_and_history(server, page):
    # 1. the form as a newcomer finds it: the CPU-sized defaults of the demo model; pick a problem; Solve
    assert page.input_value("#solve-budget textarea, #solve-budget input") == "16"
    pick(page, PICK)
    page.click("#solve-submit")
    t0 = time.monotonic()
    msg = page.locator("#solve-message .sdpo-ok")
    msg.wait_for()
    first = int(re.search(r"Job (\d+) queued", msg.inner_text()).group(1))
    page.wait_for_function("(id) => document.querySelector('#solve-job-id input, #solve-job-id textarea').value == id",
                           arg=str(first))  # the job view opens it

    # 2. the first attempt on screen; the "queued" message is gone once the job runs
    page.wait_for_selector("#solve-attempts .virtual-row", timeout=FIRST_ATTEMPT_S * 1000)
    first_attempt_s = time.monotonic() - t0
    assert "Job" not in page.inner_text("#solve-message")
    page.locator("#solve-attempts").scroll_into_view_if_needed()
    shot(page, "first_click_attempts")

    # 3. open attempt 1: raw response, extracted code (or why there is none), verdict feedback, teacher context
    #    and the per-token view of what the teacher says
    open_attempt(page, 0)
    response = page.input_value("#solve-attempt-response textarea")
    with session_scope(server.sessions) as s:
        stored = s.query(Attempt).filter_by(job_id=first, round=0, index=0).one()
        assert response == stored.response and stored.response
        assert page.input_value("#solve-attempt-feedback textarea") == stored.feedback
    wait_teacher_view(page)
    t_view = time.monotonic() - t0
    teacher = page.inner_text("#solve-attempt-teacher")
    assert "Teacher context: the question with" in teacher or "No teacher signal" in teacher, teacher
    if "Teacher context" in teacher:
        assert "The following is feedback" in page.input_value("#solve-attempt-context textarea")
    tokens = page.locator("#solve-attempt-tokens .sdpo-tok")
    assert tokens.count() == stored.tokens or "more tokens not shown" in page.inner_text("#solve-attempt-tokens")
    assert page.locator("#solve-attempt-tokens table.sdpo-worst tbody tr").count() > 0
    page.wait_for_function("() => document.querySelector('#solve-rounds').innerText.includes('yes')",
                           timeout=120_000)  # round 0's update: the rounds table says the weights changed
    page.locator("#solve-attempt-header").scroll_into_view_if_needed()
    shot(page, "first_click_attempt_detail")
    page.locator("#solve-attempt-tokens").scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    page.locator("#solve-attempt-tokens").screenshot(path=str(ARTIFACTS / "first_click_per_token_view.png"))

    # 4. the demo model spends the budget of 16 in seconds: the job ends and its view says so
    wait_status(page, "succeeded", 120)
    assert server.job(first).status == "succeeded"

    # 5. a second job that generates long attempts, cancelled while it generates: `cancelled` within 10 s
    fill(page, "solve-model", str(server.tiny))
    page.get_by_text("Advanced (SDPO settings)").click()
    fill(page, "solve-adv-max_new_tokens", str(LONG_TOKENS))
    fill(page, "solve-adv-n", str(LONG_N))
    page.click("#solve-submit")
    box = "document.querySelector('#solve-job-id input, #solve-job-id textarea')"
    page.wait_for_function(f"() => {box}.value !== '{first}'")  # the view opens the new job
    second = int(page.input_value("#solve-job-id textarea, #solve-job-id input"))
    wait_status(page, "running", 60)
    page.wait_for_timeout(3000)  # past loading the model: generating its first round
    assert server.job(second).status == "running"
    with session_scope(server.sessions) as s:
        assert s.query(Attempt).filter_by(job_id=second).count() == 0  # still generating
    page.click("#solve-cancel")
    cancel_s = wait_status(page, "cancelled", CANCEL_S)
    assert server.job(second).status == "cancelled"
    page.locator("#solve-status").scroll_into_view_if_needed()
    shot(page, "first_click_second_cancelled")

    # 6. the first job from History: the settings it ran with, its attempts, teacher context and per-token view
    page.click("button[role=tab][data-tab-id=history]")
    page.wait_for_selector("#history-table .virtual-row")
    ids = [t.strip() for t in page.locator('#history-table [data-testid$="-0"][role=gridcell]').all_inner_texts()]
    page.click(f'#history-table [data-testid="cell-{ids.index(str(first))}-0"]')
    page.click("#history-open")
    wait_status(page, f"Job {first}", 30)
    settings = page.inner_text("#solve-settings")
    assert "budget 16" in settings and "n 4" in settings and "max tokens 384" in settings, settings
    open_attempt(page, 0)
    wait_teacher_view(page)
    assert page.input_value("#solve-attempt-response textarea") == response
    page.locator("#solve-attempt-header").scroll_into_view_if_needed()
    shot(page, "first_click_from_history")
    print(f"\nfirst click: first attempt on screen after {first_attempt_s:.1f} s, its teacher view after "
          f"{t_view:.1f} s; cancel during generation -> cancelled on screen after {cancel_s:.1f} s")
