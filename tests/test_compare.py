"""A tiny end-to-end `wsram compare`, its resumption and `--plot-only`."""

from __future__ import annotations

import json
from pathlib import Path

from wsram.classification.compare import updates_to_reach

TINY = ["--canvas-size", "32", "--digit-min", "10", "--digit-max", "20", "--hidden", "16",
        "--patch", "6", "--context-size", "8", "--glimpses", "2", "--batch-size", "8",
        "--samples", "3", "--eval-size", "20", "--test-size", "30", "--eval-samples", "2",
        "--log-every", "2", "--eval-every", "0", "--checkpoint-every", "4", "--diag-every", "4",
        "--diag-batch", "8", "--diag-repeats", "3", "--no-progress"]



def test_compare_end_to_end(cli, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    code, stdout, err = cli("compare", "--out", str(out), "--steps", "8", *TINY)
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    names = {"var", "var+c", "wsram", "wsram+c", "wsram+q", "wsram+q+c", "vimco",
             "var+c+explore", "wsram+q+c+explore"}
    assert set(res["runs"]) == names
    for r in res["runs"].values():
        assert r["updates"] == 8 and 0 <= r["test_error_mc"] <= 1
        assert r["final_grad_var"] > 0 and 1 <= r["final_ess"] <= 3
    assert "temperature: 1.5" in (out / "var+c+explore" / "config.yaml").read_text()
    shared = {b["parameters_of"]: b for b in res["variance_at_shared"]}
    assert set(shared) == {"var+c", "wsram+q+c"}
    for block in shared.values():
        assert set(block["variance"]) == names - {"var+c+explore", "wsram+q+c+explore"}
        assert all(v["grad_var"] > 0 for v in block["variance"].values())
    md = (out / "results.md").read_text()
    assert "Gradient variance at the same parameters: those of wsram+q+c" in md
    assert "| WS-RAM+q |" in md and "Updates to reach" in md
    for fig in ("figure2.png", "figure4_exploration.png"):
        assert (out / fig).read_bytes()[:4] == b"\x89PNG"

    # Interrupted or extended: a second call resumes every run instead of starting over.
    before = (out / "vimco" / "metrics.jsonl").read_text()
    code, _, err = cli("compare", "--out", str(out), "--steps", "10", *TINY)
    assert code == 0, err
    after = (out / "vimco" / "metrics.jsonl").read_text()
    assert after.startswith(before.split('{"step": 8')[0])
    assert json.loads((out / "results.json").read_text())["runs"]["vimco"]["updates"] == 10

    # A different setup into the same folder is refused, not mixed in.
    code, _, err = cli("compare", "--out", str(out), "--steps", "10", *TINY,
                       "--lr", "0.01")
    assert code == 2 and "cannot resume with a different config (lr 0.001 -> 0.01)" in err
    code, _, err = cli("compare", "--out", str(out), "--steps", "10", *TINY,
                       "--lr", "0.01", "--jobs", "2")
    assert code == 2 and "cannot resume with a different config" in err

    (out / "figure2.png").unlink()
    code, _, err = cli("compare", "--plot-only", str(out))
    assert code == 0 and (out / "figure2.png").is_file()
    code, _, err = cli("compare", "--plot-only", str(tmp_path / "nothing"))
    assert code == 2 and "no such comparison folder" in err


def test_updates_to_reach_uses_the_smoothed_error() -> None:
    rows = [{"step": 10 * i, "train/error": e} for i, e in enumerate([0.9, 0.2, 0.9, 0.9, 0.5,
                                                                      0.4, 0.3, 0.2, 0.1])]
    # A single lucky batch (0.2 at step 10) does not count; the 5-point running mean does.
    assert updates_to_reach(rows, 0.5) == 70
    assert updates_to_reach(rows, 0.05) is None
