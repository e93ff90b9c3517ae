"""A tiny end-to-end `wsram compare`, its resumption and `--plot-only`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY = ["--canvas-size", "32", "--digit-min", "10", "--digit-max", "20", "--hidden", "16",
        "--patch", "6", "--context-size", "8", "--glimpses", "2", "--batch-size", "8",
        "--samples", "3", "--eval-size", "20", "--test-size", "30", "--eval-samples", "2",
        "--log-every", "2", "--eval-every", "0", "--checkpoint-every", "4", "--diag-every", "4",
        "--diag-batch", "8", "--diag-repeats", "3", "--no-progress"]


@pytest.mark.slow
def test_compare_end_to_end(cli, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    code, stdout, err = cli("compare", "--out", str(out), "--steps", "8", *TINY, "--explore")
    assert code == 0, err
    assert "compare: 9 runs of 8 updates each into" in err and "time: about" in err
    assert "exploration heuristics: var+c, wsram+q+c with them on (2 runs)" in err
    assert "test error (mean of M trajectories" in stdout and "# Comparison" not in stdout
    res = json.loads((out / "results.json").read_text())
    names = {"var", "var+c", "wsram", "wsram+c", "wsram+q", "wsram+q+c", "vimco",
             "var+c+explore", "wsram+q+c+explore"}
    assert set(res["table"]) == names
    assert set(res["runs"]) == {f"{n}/lr0.001-seed0" for n in names}
    for r in res["runs"].values():
        assert r["updates"] == 8 and 0 <= r["test_error_mc"] <= 1
        assert r["final_grad_var"] > 0 and 1 <= r["final_ess"] <= 3
    assert "temperature: 1.5" in (out / "var+c+explore" / "lr0.001-seed0" / "config.yaml"
                                  ).read_text()
    shared = {b["parameters_of"]: b for b in res["variance_at_shared"]}
    assert set(shared) == {"var+c", "wsram+q+c"}
    for block in shared.values():
        assert set(block["variance"]) == names - {"var+c+explore", "wsram+q+c+explore"}
        assert all(v["grad_var"] > 0 for v in block["variance"].values())
    md = (out / "results.md").read_text()
    assert "Gradient variance at the same parameters: those of wsram+q+c" in md
    assert "| WS-RAM+q |" in md and "Updates and seconds to reach" in md
    for fig in ("figure2.png", "figure4_exploration.png"):
        assert (out / fig).read_bytes()[:4] == b"\x89PNG"

    # Interrupted or extended: a second call resumes every run instead of starting over.
    vimco = out / "vimco" / "lr0.001-seed0"
    before = (vimco / "metrics.jsonl").read_text()
    code, _, err = cli("compare", "--out", str(out), "--steps", "10", *TINY, "--methods",
                       "vimco", "--no-explore", "--jobs", "2")  # in a process of its own
    assert code == 0, err
    after = (vimco / "metrics.jsonl").read_text()
    assert after.startswith(before.split('{"step": 8')[0])
    res = json.loads((out / "results.json").read_text())
    assert res["runs"]["vimco/lr0.001-seed0"]["updates"] == 10

    # Kept without checkpoints (as a study's committed files are) and given a longer
    # budget: the run trains again from the start instead of failing.
    for ckpt in vimco.glob("*.pt"):
        ckpt.unlink()
    for jobs in ("1", "2"):
        code, _, err = cli("compare", "--out", str(out), "--steps", "12" if jobs == "1" else
                           "14", *TINY, "--methods", "vimco", "--no-explore", "--jobs", jobs)
        assert code == 0, err
        steps = [r["step"] for r in map(json.loads, (vimco / "metrics.jsonl").open())
                 if "train/error" in r]
        assert steps == list(range(2, 15 if jobs == "2" else 13, 2))  # one run, from update 0
        (vimco / "last.pt").unlink()

    # A different setup into the same folder is refused, not mixed in.
    code, _, err = cli("compare", "--out", str(out), "--steps", "10", *TINY,
                       "--samples", "4")
    assert code == 2 and "cannot resume with a different config (samples 3 -> 4)" in err
    code, _, err = cli("compare", "--out", str(out), "--steps", "10", *TINY,
                       "--samples", "4", "--jobs", "2")
    assert code == 2 and "cannot resume with a different config" in err

    (out / "figure2.png").unlink()
    code, _, err = cli("compare", "--plot-only", str(out))
    assert code == 0 and (out / "figure2.png").is_file()
    code, _, err = cli("compare", "--plot-only", str(tmp_path / "nothing"))
    assert code == 2 and "no such comparison folder" in err


@pytest.mark.slow
def test_compare_over_seeds_and_rates_chooses_rates_and_trains_families(cli,
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "study"
    code, _, err = cli("compare", "--out", str(out), "--steps", "4", *TINY, "--seeds", "0", "1",
                       "--lrs", "0.001", "0.003", "--methods", "var+c", "wsram+q+c",
                       "--at-chosen-rate", "var", "--no-explore")
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    grid = {f"{m}/lr{lr}-seed{s}" for m in ("var+c", "wsram+q+c") for lr in ("0.001", "0.003")
            for s in (0, 1)}
    chosen = res["chosen"]["var+c"]["lr"]
    assert set(res["runs"]) == grid | {f"var/lr{chosen:g}-seed{s}" for s in (0, 1)}
    assert res["table"]["var"]["lr"] == chosen and res["table"]["var"]["seeds"] == [0, 1]
    assert {d["condition"] for d in res["differences"]} == {
        "each at its chosen rate", "both at lr 0.001", "both at lr 0.003"}
    assert (out / "figure_lr.png").read_bytes()[:4] == b"\x89PNG"
    # A study's committed files hold no checkpoints: finished runs are left as they are.
    before = {p: p.read_text() for p in out.glob("*/*/metrics.jsonl")}
    for ckpt in out.glob("*/*/*.pt"):
        ckpt.unlink()
    code, _, err = cli("compare", "--out", str(out), "--steps", "4", *TINY, "--seeds", "0", "1",
                       "--lrs", "0.001", "0.003", "--methods", "var+c", "wsram+q+c",
                       "--at-chosen-rate", "var", "--no-explore")
    assert code == 0, err
    assert before == {p: p.read_text() for p in out.glob("*/*/metrics.jsonl")}
    code, _, err = cli("compare", "--out", str(out), "--methods", "cnn", *TINY)
    assert code == 2 and "unknown attention method 'cnn'" in err
    code, _, err = cli("compare", "--out", str(out), "--max-step", "4", *TINY)
    assert code == 2 and "--max-step goes with --plot-only" in err


def test_study_progress_reads_the_last_logged_update(tmp_path: Path) -> None:
    from wsram.classification.config import ClassificationConfig
    from wsram.study.executor import StudyProgress, last_logged_step

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    assert last_logged_step(a) == 0  # nothing logged yet
    rows = [{"step": 50 * i, "train/error": 0.5} for i in range(1, 400)]
    (a / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)
                                     + '{"step": 20000, "tra')  # torn by a crash
    assert last_logged_step(a) == 50 * 399
    cfg = ClassificationConfig(steps=30000)
    bar = StudyProgress({"a": cfg, "b": cfg}, tmp_path, enabled=True)
    assert (bar.bar.n, bar.bar.total) == (50 * 399, 60000)
    b.mkdir()
    (b / "metrics.jsonl").write_text(json.dumps({"step": 90000}) + "\n")  # past its budget
    bar.ended("b", ok=False)
    assert bar.bar.n == 50 * 399 + 30000 and "0/2 runs done, 1 failed" in bar._runs()
    bar.close()


def test_the_plan_is_printed_before_anything_trains(tmp_path: Path, capsys) -> None:
    """Runs per phase, the heuristics only when asked, diagnostics that a budget below
    --diag-every would leave empty, and a time estimate from timed updates."""
    from wsram.classification import make_config
    from wsram.study.commands import announce
    from wsram.study.executor import LocalProcesses
    from wsram.study.plan import default_plan

    base = make_config(None, **dict(zip([a[2:].replace("-", "_") for a in TINY[0:-1:2]],
                                        TINY[1:-1:2], strict=True)), steps=3)
    plan = default_plan(base, [0, 1], [1e-3, 3e-3], ["var+c", "wsram+c"], ["var"])
    announce(plan, base, tmp_path / "c", 2, LocalProcesses(2))
    err = capsys.readouterr().err
    assert "compare: 10 runs of 3 updates each" in err
    assert "grid: var+c, wsram+c at lr 0.001 0.003, seeds 0 1 (8 runs)" in err
    assert "at the rate chosen for their family: var (2 runs)" in err
    assert "exploration heuristics: not trained (--explore adds them)" in err
    assert "diagnostics: none (--diag-every 4 with --steps 3)" in err
    assert "time: about" in err and "var+c 0." in err and "wsram+c 0." in err
    assert not (tmp_path / "c").exists()  # announcing writes nothing
