"""bench/first_click.py: its summary arithmetic, and a whole run on the tiny model with a tiny budget (the
plumbing only: the tiny model is random, so no solve-rate or timing asserts)."""

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fc():
    spec = importlib.util.spec_from_file_location("bench_first_click", ROOT / "bench" / "first_click.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_discovery_needs_every_public_and_hidden_test(fc):
    a = SimpleNamespace
    assert fc.discovered(a(passed=3, total=3, hidden_passed=8, hidden_total=8))
    assert fc.discovered(a(passed=3, total=3, hidden_passed=None, hidden_total=None))  # no hidden tests
    assert not fc.discovered(a(passed=3, total=3, hidden_passed=7, hidden_total=8))
    assert not fc.discovered(a(passed=2, total=3, hidden_passed=None, hidden_total=None))
    assert not fc.discovered(a(passed=0, total=0, hidden_passed=None, hidden_total=None))


def test_summary_medians_count_only_the_runs_that_discovered(fc):
    runs = [{"first_s": 4.0, "discovery_s": None, "discovered_at": None},
            {"first_s": 2.0, "discovery_s": 9.0, "discovered_at": 5},
            {"first_s": 3.0, "discovery_s": 5.0, "discovered_at": 1}]
    row = fc.summarise("Sum", "classic", runs)
    assert (row["first_s"], row["discovered"], row["n_runs"], row["discovery_s"], row["discovered_at"]) == (
        3.0, 2, 3, 7.0, 3)
    assert "| Sum | classic | 3.0 | 2/3 | 7.0 | 3 |" in fc.table([row])
    none = fc.summarise("Hard", "hard", [{"first_s": 1.0, "discovery_s": None, "discovered_at": None}])
    assert "| Hard | hard | 1.0 | 0/1 | - | - |" in fc.table([none])
    assert "classic: 1/1 examples discovered at least once, 2/3 runs" in fc.totals([row, none])
    assert "all: 1/2 examples" in fc.totals([row, none])


@pytest.mark.slow
def test_a_run_on_the_tiny_model_times_one_example_of_each_group(fc, tiny_model_path, tmp_path, capsys):
    out = tmp_path / "fc.json"
    rows = fc.main(["--model", str(tiny_model_path), "--seeds", "0", "--limit", "1", "--budget", "2", "--n", "2",
                    "--max-new-tokens", "8", "--set", "adapter=lora", "--json", str(out)])
    assert [r["group"] for r in rows] == ["easy", "classic", "hard"]
    for r in rows:
        (run,) = r["runs"]
        assert run["attempts"] == 2 and 0 < run["first_s"] <= run["total_s"]
    printed = capsys.readouterr().out
    assert all(f"| {r['title']} |" in printed for r in rows) and "median first attempt" in printed
    saved = json.loads(out.read_text())
    assert saved["settings"]["budget"] == 2 and saved["settings"]["adapter"] == "lora" and len(saved["rows"]) == 3
    from sdpo.sizing import PROMPT_ROOM  # what was left unset is what a Solve job on this model gets

    assert saved["settings"]["context_budget"] == 8 + PROMPT_ROOM
    with pytest.raises(SystemExit):
        fc.main(["--model", str(tiny_model_path), "--groups", "medium"])
