"""``innerloop report``: tables copied from results JSON, claims checked with a verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from innerloop.experiments.cli import main
from innerloop.experiments.config import ConfigError
from innerloop.experiments.verdict import check_claim

TABLE = """
title = "Tiny"
base = "base.toml"
[[row]]
name = "a"
[[row]]
name = "b"
[[row]]
name = "c"
[[row]]
name = "d"
[[claim]]
text = "a beats b"
better = "a"
than = "b"
[[claim]]
text = "b beats a"
better = "b"
than = "a"
[[claim]]
text = "c beats a"
better = "c"
than = "a"
[[claim]]
text = "d beats a"
better = "d"
than = "a"
"""


def _row(name, mean, ci, metric="mse", seeds=None):
    row = {"name": name, "label": name, "paper": None, "mean": mean, "ci95": ci, "metric": metric, "tasks": 600}
    if seeds is not None:
        row.update(seed_means=seeds, n_seeds=len(seeds), converged=True)
    return row


def test_claim_verdicts_follow_the_metric_direction_over_seeds():
    rows = {"a": _row("a", 0.5, 0.05, seeds=[0.49, 0.5, 0.51]), "b": _row("b", 0.8, 0.05, seeds=[0.79, 0.8, 0.81]),
            "c": _row("c", 0.52, 0.05, seeds=[0.45, 0.52, 0.59])}
    assert check_claim(rows, "a", "b")[0] == "yes"  # lower mse is better
    assert check_claim(rows, "b", "a")[0] == "no"
    assert check_claim(rows, "c", "a")[0] == "not resolved"
    acc = {"a": _row("a", 0.9, 0.01, "accuracy", [0.89, 0.9, 0.91]),
           "b": _row("b", 0.8, 0.01, "accuracy", [0.79, 0.8, 0.81])}
    verdict, detail = check_claim(acc, "a", "b")
    # Welch: sd 0.01 each, se = sqrt(2 * 0.0001 / 3), df = 4, t = 2.7764
    assert verdict == "yes" and "+0.1000 ± 0.0227" in detail
    assert check_claim({"a": acc["a"]}, "a", "b")[0] == "not run"


def test_one_seed_or_a_run_not_converged_is_not_judged():
    one = {"a": _row("a", 0.9, 0.001, "accuracy"), "b": _row("b", 0.5, 0.001, "accuracy")}
    verdict, detail = check_claim(one, "a", "b")
    assert verdict == "not resolved" and "fewer than 3 seeds" in detail
    rows = {"a": _row("a", 0.9, 0.01, "accuracy", [0.9] * 3), "b": _row("b", 0.5, 0.01, "accuracy", [0.5] * 3)}
    rows["b"]["converged"] = False
    assert check_claim(rows, "a", "b")[0] == "not converged"


def _tiny_results(tmp_path: Path, table: str) -> Path:
    """The table file ``table`` and a results directory with its rows a and b over 3 seeds, c not run, d
    running at paper scale only."""
    (tmp_path / "tiny.toml").write_text(table)
    res = tmp_path / "results"
    res.mkdir()
    report = {"title": "Tiny", "table": str(tmp_path / "tiny.toml"), "scale": "cpu", "scale_overrides": [], "notes": "",
              "rows": [_row("a", 0.5, 0.05, seeds=[0.49, 0.5, 0.51]), _row("b", 0.8, 0.05, seeds=[0.79, 0.8, 0.81]),
                       {"name": "c", "label": "c", "paper": 0.3, "not_run": True},
                       {"name": "d", "label": "d", "not_run": True, "why": "runs at scale paper only"}]}
    (res / "tiny.json").write_text(json.dumps(report))
    return res


def test_report_writes_tables_and_claims(tmp_path, capsys):
    res = _tiny_results(tmp_path, TABLE)
    out = tmp_path / "docs" / "RESULTS.md"
    assert main(["report", "--results", str(res), "--out", str(out)]) == 0
    text = out.read_text()
    assert "### Tiny" in text and "| a beats b | yes |" in text and "| b beats a | no |" in text
    assert "| c beats a | not run |" in text and "| c | not run | | | | 0.3 |" in text
    assert "| d beats a | not run | row d runs at scale paper only |" in text
    assert "| other | 1 | 1 | 0 | 0 | 2 | 1 | 4 |" in text and "| all | 1 | 1 | 0 | 0 | 2 | 1 | 4 |" in text
    # the "no" has no why_not in the table file: the report says so and warns
    assert "- *b beats a*: **not explained yet**" in text
    assert "table tiny has a \"no\" verdict with no why_not" in capsys.readouterr().err


def test_a_no_verdict_shows_the_tables_explanation(tmp_path, capsys):
    table = TABLE.replace('text = "b beats a"', 'text = "b beats a"\nwhy_not = "b is a stand-in that cannot win here."')
    res = _tiny_results(tmp_path, table)
    out = tmp_path / "RESULTS.md"
    assert main(["report", "--results", str(res), "--out", str(out)]) == 0
    text = out.read_text()
    assert "- *b beats a*: b is a stand-in that cannot win here." in text and "not explained" not in text
    assert "warning" not in capsys.readouterr().err


def test_every_no_in_the_committed_results_is_explained():
    results = Path(__file__).resolve().parents[1] / "docs" / "RESULTS.md"
    if not results.is_file():
        pytest.skip("no docs/RESULTS.md in this checkout")
    text = results.read_text()
    cells = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")]
    claims = [c[0][2:] for c in cells if len(c) > 2 and c[1] == "no"]  # a claims table's "reproduced?" column
    unexplained = [c for c in claims if f"- *{c}*: " not in text]
    assert not unexplained and "not explained yet" not in text, f"no why_not for: {unexplained}"


def test_bad_claims_and_missing_results_are_clear_errors(tmp_path):
    from innerloop.experiments.tables import read_table

    (tmp_path / "bad.toml").write_text(TABLE.replace('than = "b"', 'than = "zz"'))
    with pytest.raises(ConfigError, match="unknown row"):
        read_table(tmp_path / "bad.toml")
    assert main(["report", "nope", "--results", str(tmp_path), "--out", str(tmp_path / "r.md")]) == 2
    assert main(["report", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "r.md")]) == 2


def test_report_lists_rows_run_and_draws_figures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fig = "docs/figures/tiny.png"
    cmd = f"innerloop plot table results/tiny.json --out {fig}"
    entry = f'[[figure]]\nfile = "{fig}"\ncommand = "{cmd}"\ncaption = "MSE by x."\n'
    (tmp_path / "tiny.toml").write_text(TABLE + entry)
    Path("results").mkdir()
    rows = [{**_row("a", 0.5, 0.05), "x": 1, "series": "s", "train_seconds": 120.0},
            {**_row("b", 0.8, 0.05), "x": 2, "series": "s", "train_seconds": 60.0},
            {"name": "c", "label": "c", "paper": None, "not_run": True}]
    report = {"title": "Tiny", "table": "tiny.toml", "scale": "cpu", "scale_overrides": [], "notes": "", "rows": rows}
    Path("results/tiny.json").write_text(json.dumps(report))
    assert main(["report", "--out", "docs/RESULTS.md"]) == 0
    text = Path("docs/RESULTS.md").read_text()
    assert "2 of 3, 3 min of training" in text and "`innerloop reproduce tiny --rows a b`" in text
    assert f"Figure `{fig}` not drawn yet" in text and not Path(fig).exists()
    assert main(["report", "--out", "docs/RESULTS.md", "--draw"]) == 0
    text = Path("docs/RESULTS.md").read_text()
    assert Path(fig).stat().st_size > 0 and "![MSE by x.](figures/tiny.png)" in text and f"Drawn by `{cmd}`" in text


def test_figure_commands_must_be_plot_commands_writing_the_file(tmp_path):
    from innerloop.experiments.tables import read_table

    (tmp_path / "t.toml").write_text(TABLE + '[[figure]]\nfile = "a.png"\ncommand = "innerloop train x --out a.png"\n')
    with pytest.raises(ConfigError, match="must be `innerloop plot"):
        read_table(tmp_path / "t.toml")
    other = '[[figure]]\nfile = "a.png"\ncommand = "innerloop plot table r.json --out b.png"\n'
    (tmp_path / "t.toml").write_text(TABLE + other)
    with pytest.raises(ConfigError, match="must be `innerloop plot"):
        read_table(tmp_path / "t.toml")


def test_report_draws_each_tables_validation_curves(tmp_path):
    (tmp_path / "tiny.toml").write_text(TABLE)
    res = tmp_path / "results"
    res.mkdir()
    a = _row("a", 0.5, 0.05, seeds=[0.5, 0.5, 0.5])
    a["runs"] = [{"seed": k, "val_curve": [[100, 0.9 - k / 10], [200, 0.6]], "converged": k != 1} for k in range(3)]
    report = {"title": "Tiny", "table": str(tmp_path / "tiny.toml"), "scale": "cpu", "scale_overrides": [], "notes": "",
              "rows": [a, _row("b", 0.8, 0.05)]}
    (res / "tiny.json").write_text(json.dumps(report))
    out = tmp_path / "docs" / "RESULTS.md"
    assert main(["report", "--results", str(res), "--out", str(out)]) == 0
    assert "tiny_curves.png" not in out.read_text()  # not drawn yet
    assert main(["report", "--results", str(res), "--out", str(out), "--draw"]) == 0
    assert (tmp_path / "docs" / "figures" / "tiny_curves.png").stat().st_size > 0
    assert "![validation curves of tiny](figures/tiny_curves.png)" in out.read_text()


def test_a_figure_without_data_is_named_not_drawn_and_the_report_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fig = "docs/figures/tiny.png"
    entry = f'[[figure]]\nfile = "{fig}"\ncommand = "innerloop plot table results/tiny.json --out {fig}"\n'
    (tmp_path / "tiny.toml").write_text(TABLE + entry)
    Path("results").mkdir()
    Path("docs/figures").mkdir(parents=True)
    Path(fig).write_bytes(b"stale")  # an old figure of other rows must not be shown
    rows = [{"name": n, "label": n, "paper": None, "not_run": True} for n in "abc"]
    report = {"title": "Tiny", "table": "tiny.toml", "scale": "cpu", "scale_overrides": [], "notes": "", "rows": rows}
    Path("results/tiny.json").write_text(json.dumps(report))
    assert main(["report", "--out", "docs/RESULTS.md", "--draw"]) == 0
    text = Path("docs/RESULTS.md").read_text()
    assert f"Figure `{fig}` not drawn: " in text and "no row has a result" in text and "![" not in text
