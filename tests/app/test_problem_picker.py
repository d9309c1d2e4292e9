"""Imported LiveCodeBench problems in the app: ``sdpo data import-lcb`` output registered as a dataset is a
Train choice and its problems.jsonl feeds the Solve page's problem picker; a picked problem (hidden tests
included) is accepted by the real submission path (engine validators, SQLite database, filesystem broker)."""

from __future__ import annotations

import base64
import json
import pickle
import zlib
from pathlib import Path

import pytest

from app.views import solve, train
from backend.errors import InvalidInput, NotFound
from backend.services import datasets as D
from backend.services import jobs as J
from backend.services import picker as P
from sdpo.data.lcb import import_lcb


def _case(i: str, o: str, t: str = "stdin") -> dict:
    return {"input": i, "output": o, "testtype": t}


def lcb_rows() -> list[dict]:
    """Two LiveCodeBench rows: stdin with JSON private tests, functional with the pickled encoding."""
    stdin_private = [_case(f"{a} {b}\n", f"{a + b}\n") for a, b in [(10, 20), (-5, 5), (7, 8)]]
    fn_cases = [_case(f"{json.dumps(a)}\n{k}", json.dumps(k * sum(a)), "functional")
                for a, k in [([1, 2], 3), ([], 5), ([-1, 4, 7], 2), ([5], 1)]]
    pickled = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(fn_cases[1:]), protocol=4))).decode()
    return [
        {"question_title": "Add Two", "platform": "atcoder", "question_id": "abc301_a", "contest_id": "abc301",
         "contest_date": "2024-03-02T00:00:00", "starter_code": "", "difficulty": "easy",
         "question_content": "Given integers A and B, print A+B.",
         "public_test_cases": json.dumps([_case("1 2\n", "3\n")]),
         "private_test_cases": json.dumps(stdin_private), "metadata": "{}"},
        {"question_title": "Scaled sum", "platform": "leetcode", "question_id": "3000", "contest_id": "weekly-400",
         "contest_date": "2025-03-10T00:00:00", "difficulty": "medium",
         "starter_code": "class Solution:\n    def scaledSum(self, nums: List[int], k: int) -> int:\n        ",
         "question_content": "Return k times the sum of nums.",
         "public_test_cases": json.dumps(fn_cases[:1]), "private_test_cases": pickled,
         "metadata": json.dumps({"func_name": "scaledSum"})},
    ]


@pytest.fixture
def lcb_dir(tmp_path) -> Path:
    src = tmp_path / "lcb.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in lcb_rows()))
    out = tmp_path / "lcb_out"
    import_lcb([src], out)
    return out


def register(ctx, name: str, path: Path) -> int:
    with ctx.session() as s:
        return D.register_dataset(s, name=name, path=str(path)).id


def small_config() -> dict:
    return solve.build_solve_config(strategy="best_of_k", budget="4", adapter="lora", extra_yaml="",
                                    advanced={"n": "2", "max_new_tokens": "16"})


def test_import_lcb_dir_registers_as_a_train_dataset(ctx, lcb_dir):
    ds_id = register(ctx, "lcb", lcb_dir)
    with ctx.session() as s:
        ds = D.get_dataset(s, dataset_id=ds_id)
        assert (ds.train_rows, ds.test_rows) == (2, 2)
    assert "lcb" in train._dataset_choices(ctx)  # the Train page's "Registered dataset" list
    jid = train.submit(ctx, source="registered", registered="lcb", config={"loss": "sdpo", "max_steps": 1})
    with ctx.session() as s:
        job = J.get_job(s, job_id=jid)
        assert job.label == "lcb" and job.dataset_id == ds_id
        assert job.config["train_file"] == str((lcb_dir / "train.jsonl").resolve())
        assert job.config["test_file"] == str((lcb_dir / "test.jsonl").resolve())


def test_empty_test_split_registers_without_test_file(ctx, tmp_path):
    src = tmp_path / "lcb.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in lcb_rows()))
    out = tmp_path / "all_train"
    import_lcb([src], out, cutoff="2030-01-01")  # every contest before the cutoff: test.jsonl is empty
    assert (out / "test.jsonl").stat().st_size == 0
    ds_id = register(ctx, "all-train", out)
    with ctx.session() as s:
        ds = D.get_dataset(s, dataset_id=ds_id)
        assert (ds.train_rows, ds.test_rows) == (2, 0)
        assert D.dataset_config(ds)["test_file"] is None


def test_picker_lists_imported_problems_only(ctx, lcb_dir, tmp_path):
    plain = tmp_path / "plain.jsonl"  # a dataset without problems.jsonl is not in the picker
    plain.write_text(json.dumps({"prompt": "2+2?", "kind": "mcq", "answer": "4"}) + "\n")
    register(ctx, "aaa-plain", plain)
    ds_id = register(ctx, "lcb", lcb_dir)
    with ctx.session() as s:
        choices = P.list_dataset_problems(s)
        assert [(c.dataset_id, c.dataset, c.index, c.title, c.platform, c.difficulty) for c in choices] == [
            (ds_id, "lcb", 0, "Add Two", "atcoder", "easy"),
            (ds_id, "lcb", 1, "Scaled sum", "leetcode", "medium"),
        ]
        assert P.list_dataset_problems(s, dataset_id=ds_id) == choices
        assert P.list_dataset_problems(s, limit=1) == choices[:1]
    assert solve.problem_choices(ctx) == [(c.label, c.key) for c in choices]
    assert choices[1].label == "lcb · #1 Scaled sum (leetcode, medium)" and choices[1].key == f"{ds_id}:1"


def test_picked_problems_keep_hidden_tests_and_submit(ctx, lcb_dir):
    ds_id = register(ctx, "lcb", lcb_dir)
    expected = [json.loads(line) for line in (lcb_dir / "problems.jsonl").read_text().splitlines()]
    for index, want in enumerate(expected):
        problem = solve.pick_problem(ctx, f"{ds_id}:{index}")
        assert problem == want
        # the picker fills the "Paste JSON" source; what the page builds from it is the same problem
        built = solve.build_problem(ctx, source="json", title="", statement="", testtype="stdin", fn_name="",
                                    rows=[], json_text=json.dumps(problem, indent=2), starter_code="")
        assert built == problem
        before = ctx.queue.length()
        jid = solve.submit(ctx, problem=built, config=small_config())
        assert ctx.queue.length() == before + 1
        with ctx.session() as s:
            job = J.get_job(s, job_id=jid)
            assert (job.kind, job.status) == ("solve", "queued")
            assert job.problem.n_public_tests == len(want["tests"]["inputs"]) == 2
            assert job.problem.n_hidden_tests == len(want["hidden_tests"]["inputs"]) == 4
    assert expected[1]["tests"]["fn_name"] == "scaledSum"


def test_bad_picks_name_the_field(ctx, lcb_dir, tmp_path):
    ds_id = register(ctx, "lcb", lcb_dir)
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"prompt": "2+2?", "kind": "mcq", "answer": "4"}) + "\n")
    plain_id = register(ctx, "plain", plain)
    with ctx.session() as s:
        for kw, field in [({"dataset_id": ds_id, "index": 2}, "index"), ({"dataset_id": ds_id, "index": -1}, "index"),
                          ({"dataset_id": plain_id, "index": 0}, "dataset_id")]:
            with pytest.raises(InvalidInput) as e:
                P.load_dataset_problem(s, **kw)
            assert e.value.field == field
        with pytest.raises(InvalidInput, match="has 2 problems"):
            P.load_dataset_problem(s, dataset_id=ds_id, index=2)
        with pytest.raises(NotFound):
            P.load_dataset_problem(s, dataset_id=999, index=0)
        with pytest.raises(InvalidInput) as e:
            P.list_dataset_problems(s, limit=0)
        assert e.value.field == "limit"
    for key in ("", None, "abc", "1", "x:1"):
        with pytest.raises(InvalidInput) as e:
            solve.pick_problem(ctx, key)
        assert e.value.field == "problem"
    with open(lcb_dir / "problems.jsonl", "a") as f:
        f.write("{broken\n")
    with ctx.session() as s, pytest.raises(InvalidInput, match="line 3") as e:
        P.list_dataset_problems(s)
    assert e.value.field == "problems"
    assert solve.pick_problem(ctx, f"{ds_id}:0")["title"] == "Add Two"  # lines before the bad one still load
