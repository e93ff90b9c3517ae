"""The command line end to end on tiny sizes, and its answers to bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY as TINY_BASE
from conftest import flags

from wsram.run_dir import read_metrics

TINY = [*flags(dict(TINY_BASE, log_every=5, eval_every=10, checkpoint_every=10)),
        "--no-progress"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def wsram(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, "-m", "wsram", *args], capture_output=True, text=True,
                       env=env, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p



@pytest.mark.slow
def test_train_evaluate_show_end_to_end(tmp_path: Path) -> None:
    run = tmp_path / "run"
    wsram("train", "--run-dir", str(run), "--method", "wsram+q+c", "--steps", "20", *TINY)
    for f in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt"):
        assert (run / f).is_file(), f
    rows = read_metrics(run)
    assert [r["step"] for r in rows if "train/error" in r] == [5, 10, 15, 20]
    assert all(1 <= r["train/ess"] <= 3 for r in rows if "train/ess" in r)
    out = wsram("evaluate", str(run)).stdout
    assert "one sampled trajectory" in out and "deterministic policy" in out
    res = json.loads((run / "eval.json").read_text())
    for key in ("test_error_sampled", "test_error_mc", "test_error_deterministic"):
        assert 0 <= res[key] <= 1
    assert res["test_images"] == 30
    # evaluations during training read the validation canvases, never the test set
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    assert evals and all(k.startswith("eval/val_") for r in evals for k in r if k != "step")
    out = wsram("evaluate", str(run), "--checkpoint", "best").stdout
    assert "selected on 20 validation canvases" in out and "optimistic" not in out
    wsram("show", str(run), "--num", "4")
    png = (run / "glimpses.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


@pytest.mark.parametrize("method", ["var", "var+c", "wsram", "wsram+c", "wsram+q", "vimco"])
def test_every_method_trains(cli, tmp_path: Path, method: str) -> None:
    precision = "bf16" if method == "wsram+q" else "fp32"
    temperature = "1" if method == "vimco" else "1.5"
    code, out, err = cli("train", "--json", "--run-dir", str(tmp_path), "--method", method,
                         "--steps", "6", "--temperature", temperature, "--coverage", "0.1",
                         "--entropy", "0.01", "--precision", precision, *TINY)
    assert code == 0, err
    last = json.loads(out.strip().splitlines()[-1])
    assert last["step"] == 6 and 0 <= last["eval/val_error_mc"] <= 1


@pytest.mark.slow
def test_resume_continues_exactly(cli, tmp_path: Path) -> None:
    common = ["--method", "var+c", *TINY]
    assert cli("train", "--run-dir", str(tmp_path / "a"), "--steps", "20", *common)[0] == 0
    assert cli("train", "--run-dir", str(tmp_path / "b"), "--steps", "10", *common)[0] == 0
    assert cli("train", "--run-dir", str(tmp_path / "b"), "--steps", "20", "--resume",
               "--no-progress")[0] == 0
    # Resuming a finished run does nothing, and logs nothing twice.
    assert cli("train", "--run-dir", str(tmp_path / "b"), "--resume",
               "--no-progress")[0] == 0
    code, _, err = cli("train", "--run-dir", str(tmp_path / "b"), "--resume",
                       "--method", "wsram", "--loc-std", "0.05")
    assert code == 2 and "cannot resume with a different config" in err
    assert "method 'var+c' -> 'wsram'" in err and "loc_std" in err
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(tmp_path / "a")]
    assert strip == [{k: v for k, v in r.items() if k != "time"}
                     for r in read_metrics(tmp_path / "b")]


def test_a_checkpoint_from_before_own_action_streams_resumes_with_a_notice(
        cli, tmp_path: Path) -> None:
    """A last.pt without ``action_rng`` (written when actions came from the global
    generator) resumes, saying in one line that its continuation differs from the old
    code's; the checkpoints it then writes hold the run's own stream."""
    run = tmp_path / "old"
    assert cli("train", "--run-dir", str(run), "--steps", "4", "--method", "var+c",
               *TINY)[0] == 0
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["action_rng"].dtype == torch.uint8
    del state["action_rng"]
    torch.save(state, run / "last.pt")
    code, _, err = cli("train", "--run-dir", str(run), "--resume", "--steps", "6",
                       "--no-progress")
    assert code == 0, err
    notice = [line for line in err.splitlines() if "own generator" in line]
    assert len(notice) == 1 and "continuation differs from the older wsram's" in notice[0]
    assert "action_rng" in torch.load(run / "last.pt", weights_only=True)


@pytest.mark.parametrize("args, message", [
    (["--method", "reinforce"], "unknown method 'reinforce'"),
    (["--samples", "0"], "samples: K must be at least 1"),
    (["--steps", "-5"], "steps: must be >= 0"),
    (["--steps", "ten"], "steps: expected int"),
    (["--digit-max", "40"], "does not fit"),
    (["--scales", "0.5", "1.5"], "scales: each scale"),
    (["--method", "vimco", "--samples", "1"], "vimco needs K >= 2"),
    (["--lr", "nan"], "lr: expected float"),
    (["--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist"),
    (["--device", "cuda:x"], "device: expected cpu, cuda or cuda:N"),
    (["--method", "vimco", "--temperature", "2"], "use temperature 1 with vimco"),
    (["--precision", "fp8"], "precision: expected fp32 or bf16"),
])
def test_bad_options_get_one_line_and_exit_2(cli, tmp_path: Path, args, message) -> None:
    code, out, err = cli("train", "--run-dir", str(tmp_path / "r"), "--steps", "3",
                         *TINY, *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_config_file_unknown_key_and_bad_yaml(cli, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: wsram\nhiden: 32\n")
    code, _, err = cli("train", "--run-dir", str(tmp_path / "r"), "--config", str(cfg))
    assert code == 2 and "unknown config key 'hiden'; did you mean 'hidden'?" in err
    cfg.write_text("method: [wsram\n")
    code, _, err = cli("train", "--run-dir", str(tmp_path / "r"), "--config", str(cfg))
    assert code == 2 and "not valid YAML" in err
    code, _, err = cli("train", "--run-dir", str(tmp_path / "r"), "--config",
                       str(tmp_path / "missing.yaml"))
    assert code == 2 and "no such config file" in err


@pytest.mark.slow
def test_run_folders_are_not_clobbered_and_bad_runs_are_refused(cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli("train", "--run-dir", str(run), "--steps", "2", *TINY)[0] == 0
    before = (run / "last.pt").read_bytes()
    code, _, err = cli("train", "--run-dir", str(run), "--steps", "2", *TINY)
    assert code == 2 and "already holds a run" in err
    assert (run / "last.pt").read_bytes() == before
    # Outputs never land on a user's checkpoint or in a folder that is not there.
    code, _, err = cli("show", str(run), "--out", str(run / "last.pt"))
    assert code == 2 and "expected a .png file name" in err
    code, _, err = cli("show", str(run), "--out", str(tmp_path / "no" / "x.png"))
    assert code == 2 and "no such folder" in err
    code, _, err = cli("cost", str(run), "--out", str(run / "config.yaml"))
    assert code == 2 and "expected a .md" in err
    assert (run / "last.pt").read_bytes() == before
    assert oct((run / "last.pt").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    # A truncated checkpoint, a foreign model and a file that would run code are refused.
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "config.yaml").write_bytes((run / "config.yaml").read_bytes())
    (tmp_path / "cut" / "last.pt").write_bytes(before[: len(before) // 2])
    code, _, err = cli("evaluate", str(tmp_path / "cut"))
    assert code == 2 and "truncated or not a checkpoint" in err
    (tmp_path / "cut" / "config.yaml").write_text(
        (run / "config.yaml").read_text().replace("hidden: 16", "hidden: 32"))
    (tmp_path / "cut" / "last.pt").write_bytes(before)
    code, _, err = cli("evaluate", str(tmp_path / "cut"))
    assert code == 2 and "different model: hidden=16 (expected 32)" in err

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"format": "wsram-checkpoint-v1", "x": Evil()}, tmp_path / "cut" / "last.pt")
    code, _, err = cli("evaluate", str(tmp_path / "cut"))
    assert code == 2 and "refused" in err and not (tmp_path / "pwned").exists()
    code, _, err = cli("evaluate", str(tmp_path / "nothing-here"))
    assert code == 2 and "no such run folder" in err
    code, _, err = cli("train", "--run-dir", str(tmp_path / "new"), "--resume")
    assert code == 2 and "nothing to resume" in err


def test_resuming_with_fewer_steps_says_where_the_run_is_and_keeps_its_config(
        cli, tmp_path: Path) -> None:
    run = tmp_path / "r"
    assert cli("train", "--run-dir", str(run), "--steps", "12", *TINY)[0] == 0
    config = (run / "config.yaml").read_text()
    code, out, err = cli("train", "--run-dir", str(run), "--resume", "--steps", "5",
                         "--no-progress")
    assert code == 0 and "at update 12, past the 5 asked; nothing to train" in out, out + err
    assert (run / "config.yaml").read_text() == config  # still steps: 12
    code, out, _ = cli("train", "--run-dir", str(run), "--resume", "--no-progress")
    assert code == 0 and "already at 12 updates" in out


def test_progress_into_a_log_file_is_plain_lines(cli, tmp_path: Path) -> None:
    """Not a terminal (here: captured stderr): a line every tenth of the way, no bar
    redrawn with carriage returns."""
    args = [a for a in TINY if a != "--no-progress"]
    code, _, err = cli("train", "--run-dir", str(tmp_path / "r"), "--steps", "20", *args)
    assert code == 0, err
    lines = [x for x in err.splitlines() if ": update " in x]
    assert [x.split(" of ")[0].split()[-1] for x in lines] == [str(n) for n in range(2, 21, 2)]
    assert "\r" not in err and "updates/s" in lines[0] and "err " in lines[-1]


def test_a_run_says_what_data_it_found_and_prints_json_only_when_asked(
        cli, tmp_path: Path) -> None:
    """The first line names the data and each split's size; too few validation images
    are warned about; the summary counts the canvases it evaluated on; stdout stays empty
    without --json."""
    code, out, err = cli("train", "--run-dir", str(tmp_path / "r"), "--steps", "5", *TINY)
    assert code == 0, err
    assert out == ""
    assert ("data: the bundled digits: 10 classes, 1 channel; 3600 training, 400 "
            "validation, 1000 test digits") in err
    assert "warning: only 20 validation digits" in err  # TINY's eval_size 20
    assert "on 20 validation canvases (every 10th training digit" in err
    code, out, err = cli("train", "--run-dir", str(tmp_path / "r2"), "--steps", "5",
                         *TINY, "--eval-size", "500", "--json")
    assert code == 0 and "warning" not in err
    assert "on 400 validation canvases" in err  # all there are, not the 500 asked
    assert json.loads(out)["step"] == 5


def test_a_cnn_is_described_as_a_cnn(cli, tmp_path: Path) -> None:
    """No trajectories, policies, glimpses or ESS for the baseline that takes none."""
    from PIL import Image

    run, png = tmp_path / "cnn", tmp_path / "a.png"
    Image.new("L", (32, 32), 128).save(png)
    code, _, err = cli("train", "--run-dir", str(run), "--method", "cnn", "--steps", "10",
                       *TINY)
    assert code == 0, err
    code, out, err = cli("evaluate", str(run))
    assert code == 0 and "test_error   " in out and "(the CNN: one pass" in out, out + err
    code, out, err = cli("predict", str(run), str(png), "--out", str(tmp_path / "p"))
    assert code == 0 and "  CNN: " in out and "figure: " in out, out + err
    for said in (out, err):
        assert "trajector" not in said and "deterministic" not in said and "glimpses:" not in said
    assert json.loads((run / "eval.json").read_text())["attends"] is False


def test_one_flag_name_per_meaning_and_help_that_says_what_it_takes(cli, tmp_path: Path,
                                                                   capsys) -> None:
    """M (trajectories averaged) is --eval-samples wherever it is read (--samples, K in
    train, still accepted by evaluate); word-valued keys show their words; every command
    names its run folder RUN and says what --checkpoint picks; captioning offers no key
    it refuses; a mistake points to the help of the command typed."""
    from wsram.cli import build_parser

    run = tmp_path / "r"
    assert cli("train", "--run-dir", str(run), "--steps", "4", *TINY)[0] == 0
    for flag in ("--eval-samples", "--samples"):
        code, out, err = cli("evaluate", str(run), flag, "3", "--out", str(tmp_path / "e.json"))
        assert code == 0 and "mean of 3 trajectories" in out, err

    def help_of(*words: str) -> str:
        with pytest.raises(SystemExit):
            build_parser().parse_args([*words, "-h"])
        return " ".join(capsys.readouterr().out.split())  # as one line, however wrapped

    train = help_of("train")
    assert "--source mnist|folder|npz" in train and "--fit pad|resize" in train
    assert "(M in the paper)" in train
    for words in (("evaluate",), ("show",), ("predict",), ("cost",), ("caption", "evaluate"),
                  ("caption", "show"), ("caption", "plot")):
        text = help_of(*words)
        assert "RUN" in text and "run_dir" not in text, words
        assert "BEAM_SIZE" not in text and " SIZE" not in text and " NUM" not in text, words
        if "--checkpoint" in text:
            assert "which checkpoint: last.pt" in text, words
    assert "--coverage" not in help_of("caption", "train")
    for words, prog in ((("train", "--nonsense"), "wsram train"),
                        (("caption", "show", str(run), "--x"), "wsram caption show")):
        code, _, err = cli(*words)
        assert code == 2 and err.strip().endswith(f"(see {prog} -h)"), err


def test_no_training_into_a_folder_of_the_users_or_a_file(cli, tmp_path: Path) -> None:
    """A folder of the user's own files, a file, a study's folder are refused in one line
    (--overwrite included) and left as they were; a run folder carries the marker that
    says so, and one made before markers existed still resumes."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    (tmp_path / "notes.txt").write_text("mine")
    for args, message in (([str(mine)], "holds files that are not a wsram run (thesis.tex)"),
                          ([str(mine), "--overwrite"], "holds files that are not a wsram run"),
                          ([str(tmp_path / "notes.txt")], "a file, not a folder")):
        code, _, err = cli("train", "--run-dir", *args, "--steps", "2", *TINY)
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert os.listdir(mine) == ["thesis.tex"] and (tmp_path / "notes.txt").read_text() == "mine"
    run = tmp_path / "run"
    assert cli("train", "--run-dir", str(run), "--steps", "2", *TINY)[0] == 0
    assert (run / ".wsram").read_text().startswith("run\n")
    (run / ".wsram").unlink()  # as a run from before markers
    code, _, err = cli("train", "--run-dir", str(run), "--resume", "--steps", "4", *TINY)
    assert code == 0, err
    study = tmp_path / "study"
    study.mkdir()
    (study / ".wsram").write_text("study\n")
    code, _, err = cli("train", "--run-dir", str(study), "--steps", "2", *TINY)
    assert code == 2 and "the parent folder of a study's or a stack's runs" in err, err


def test_a_config_file_of_another_task_is_named_as_such(cli, tmp_path: Path) -> None:
    """By its task: key (every shipped config has one) or, without one, by its keys."""
    root = Path(__file__).resolve().parent.parent / "configs"
    code, _, err = cli("caption", "train", "--config", str(root / "cluttered60.yaml"),
                       "--run-dir", str(tmp_path / "c"))
    assert code == 2 and "cluttered60.yaml: a classification config, not a caption one; use " \
        "it with wsram train" in err, err
    untagged = tmp_path / "beam.yaml"
    untagged.write_text("beam_size: 4\n")
    code, _, err = cli("train", "--config", str(untagged), "--run-dir", str(tmp_path / "c"))
    assert code == 2 and "a caption config, not a classification one" in err, err
    assert not (tmp_path / "c").exists()
    for f in root.glob("*.yaml"):
        assert "\ntask: " in f.read_text(), f


def test_compare_refuses_a_run_folder_as_its_out(cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli("train", "--run-dir", str(run), "--steps", "2", *TINY)[0] == 0
    code, _, err = cli("compare", "--out", str(run), "--methods", "var+c", "--steps", "2",
                       *TINY)
    assert code == 2 and "holds a run, not a study's runs" in err, err
