"""The app's public API through ``gradio_client`` against the real app (launched in this process on a free
port, real SQLite + filesystem broker in a tmp data dir, the engines' validators): submit solve, submit
train, job status; invalid input gives the error message and creates no job."""

from __future__ import annotations

import pytest
from gradio_client import Client
from sqlalchemy import func, select

from app.context import AppContext
from app.main import launch
from backend.migrate import upgrade
from backend.models import Job
from backend.settings import Settings
from tests.app.conftest import free_port

TESTS = {"headers": ["input", "expected output", "hidden"],
         "data": [["1 2", "3", False], ["2 2", "4", False], ["5 5", "10", True]]}
STATEMENT = "# Add\nRead two integers and print their sum."


@pytest.fixture(scope="module")
def served(tmp_path_factory, hooks):
    data = tmp_path_factory.mktemp("api") / "data"
    settings = Settings(data_dir=data, database_url="", broker_url="", model="", auth=None, host="127.0.0.1",
                        port=free_port(), queue="gpu-api-test")
    upgrade(settings.database_url)
    demo_app, url, _ = launch(settings, hooks, prevent_thread_lock=True, quiet=True)
    client = Client(url, verbose=False)
    ctx = AppContext.create(settings, hooks)
    yield client, ctx
    client.close() if hasattr(client, "close") else None
    import gradio as gr

    gr.close_all()


def n_jobs(ctx) -> int:
    with ctx.session() as s:
        return int(s.scalar(select(func.count(Job.id))))


def solve_args(**over):
    args = dict(title_v="", statement_v=STATEMENT, source_v="editor", testtype_v="stdin", fn_v="", rows_v=TESTS,
                json_v="", starter_v="", strategy_v="best_of_k", budget_v="4", model_v="", adapter_v="lora",
                extra_v="")
    args.update(over)
    # the Advanced boxes: alpha, top-k, lr, teacher, EMA rate, n, temperature, max tokens (empty = default)
    adv = ["", "", "", "", "", "2", "", "16"]
    return [*args.values(), *adv]


def test_submit_solve_and_status(served):
    client, ctx = served
    before = n_jobs(ctx)
    message, job_id = client.predict(*solve_args(), api_name="/submit_solve")
    assert f"Job {job_id} queued" in message and n_jobs(ctx) == before + 1
    status = client.predict(job_id, api_name="/job_status")
    assert status["id"] == job_id and status["kind"] == "solve" and status["status"] == "queued"
    assert status["config"]["budget"] == 4 and status["config"]["n"] == 2
    assert status["config"]["max_new_tokens"] == 16 and status["n_attempts"] == 0
    assert ctx.queue.length() >= 1


@pytest.mark.parametrize("over, text", [
    ({"statement_v": ""}, "statement: is empty"),
    ({"budget_v": "ten"}, "budget: got &#x27;ten&#x27;"),
    ({"rows_v": {"headers": TESTS["headers"], "data": [["1 2", "", False]]}}, "tests.row 1"),
    ({"extra_v": "self_distillation: {alpha: 7}"}, "self_distillation.alpha"),
])
def test_submit_solve_invalid_creates_no_job(served, over, text):
    client, ctx = served
    before = n_jobs(ctx)
    message, _ = client.predict(*solve_args(**over), api_name="/submit_solve")
    assert "sdpo-error" in message and text in message
    assert n_jobs(ctx) == before


def test_submit_train_and_status(served):
    client, ctx = served
    fields = ["1", "1", "2", "0.0001", "8", "0", "0"]  # steps, questions, n, lr, max tokens, val, save
    message, job_id, _ = client.predict("humaneval", None, "", "", None, "grpo", "lora", "", "", *fields,
                                        api_name="/submit_train")
    assert f"Job {job_id} queued" in message
    status = client.predict(job_id, api_name="/job_status")
    assert status["kind"] == "train" and status["status"] == "queued"
    assert status["config"]["loss"] == "grpo" and status["config"]["dataset"] == "humaneval"
    assert status["config"]["max_steps"] == 1 and status["config"]["n"] == 2
    before = n_jobs(ctx)
    message, _, _ = client.predict("humaneval", None, "", "", None, "grpo", "lora", "", "", "many", *fields[1:],
                                   api_name="/submit_train")
    assert "sdpo-error" in message and "max_steps" in message and n_jobs(ctx) == before


def test_job_status_of_unknown_job(served):
    client, _ = served
    assert client.predict(987654, api_name="/job_status") == {"error": "job 987654 not found"}


def test_login_from_settings(tmp_path, hooks):
    from app.auth import make_auth

    settings = Settings(data_dir=tmp_path / "data", database_url="", broker_url="", model="",
                        auth="alice:secret,bob:pw2", port=free_port(), queue="gpu-auth-test")
    check = make_auth(settings)
    assert check("alice", "secret") and check("bob", "pw2")
    assert not check("alice", "pw2") and not check("carol", "secret") and not check("alice", "")
    assert make_auth(Settings(data_dir=tmp_path / "d2", auth=None)) is None

    upgrade(settings.database_url)
    _, url, _ = launch(settings, hooks, prevent_thread_lock=True, quiet=True)
    from gradio_client.exceptions import AuthenticationError

    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        Client(url, verbose=False)
    client = Client(url, auth=("alice", "secret"), verbose=False)
    assert client.predict(1, api_name="/job_status") == {"error": "job 1 not found"}
