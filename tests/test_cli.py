"""The `owd` command: subcommands and their help, paths from the caller's folder, default outputs, progress and summary, and a strict log."""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import time

import jsonschema
import pytest

from conftest import ROOT
from owd.errors import OwdError
from stages import cli, launch
from stages.config import ConfigError, Settings, load
from stages.progress import Progress
from stages.tally import Tally
from stream.events import SCHEMA_PATH, EventLog, read_log

OWD = [sys.executable, "-m", "stages.cli"]  # what the installed `owd` runs (setup.cfg console_scripts)


def owd(*args, cwd, timeout=60):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([*OWD, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def validator():
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def test_help_lists_every_command_with_an_example(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in ("run", "classes", "gallery", "train-student", "evaluate", "keys"):
        assert f"\n  {name} " in text and f"owd {name} " in text  # described, and an example line


def test_owd_evaluate_runs_the_packaged_evaluator_from_any_folder(tmp_path):
    result = owd("evaluate", "--data", "nowhere", "--seen", "a", "--json", "m.json", "--predictions", "p.jsonl",
                 cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("evaluate: --data nowhere is not a directory")
    assert "Traceback" not in result.stderr
    help_text = owd("evaluate", "--help", cwd=tmp_path).stdout
    assert help_text.startswith("usage: owd evaluate")


def test_console_script_is_declared():
    text = (ROOT / "setup.cfg").read_text()
    assert "owd = stages.cli:entry" in text and callable(cli.entry)


def test_nothing_imports_run_pipeline():
    for folder in ("stages", "stream", "models", "owd", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not re.search(r"^\s*(import|from)\s+run_pipeline\b", path.read_text(), re.M), path


@pytest.mark.parametrize("argv, words", [
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["--source", "missing.avi"], "does not exist"),
    (["train-student", "--crops", ".", "--init", "nope.pth", "--out", "s.pth"], "--init nope.pth"),
    (["run", "--source", "x.avi", "--name", "../up"], "--name"),
])
def test_errors_are_one_line_naming_the_real_flag_and_exit_2(tmp_path, argv, words):
    (tmp_path / "x.avi").write_bytes(b"")
    (tmp_path / "a.png").write_bytes(b"")  # train-student needs an image before it looks at --init
    result = owd(*argv, cwd=tmp_path)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "--weights" not in result.stderr


def test_list_models_hides_the_test_models(capsys):
    assert cli.main(["--list-models"]) == 0
    out = capsys.readouterr().out
    assert "ssd_mobilenet_v2" in out and "efficientnet_lite0" in out and "test_" not in out


def test_every_user_error_is_an_owd_error():
    from evaluation.evaluate import EvalError
    from models.registry import ModelError
    from models.sddc import MemoryFileError
    from stream.sources import SourceError
    for error in (ConfigError, ModelError, MemoryFileError, SourceError, EvalError):
        assert issubclass(error, OwdError), error
    assert issubclass(ConfigError, ValueError) and issubclass(MemoryFileError, ValueError)  # callers catching these


def run_args(*argv) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    launch.add_arguments(p)
    return p.parse_args(list(argv))


def test_paths_resolve_against_the_callers_folder_and_outputs_default_to_runs(tmp_path):
    (tmp_path / "cfg.yaml").write_text("cluster:\n  crops_dir: crops\n")
    s = launch.prepare(run_args("--source", "v.avi", "--memory", "m/c.npz", "--config", "cfg.yaml",
                                "--set", "detect.weights=w.pth", "--set", "embed.weights=random"), tmp_path)
    assert s.capture.source == [str(tmp_path / "v.avi")] and s.gate.memory == str(tmp_path / "m" / "c.npz")
    assert s.cluster.crops_dir == str(tmp_path / "crops") and s.detect.weights == str(tmp_path / "w.pth")
    assert s.embed.weights == "random"  # a keyword, not a file
    assert s.sink.events == str(tmp_path / "runs" / "run" / "events.jsonl")
    assert s.sink.save == str(tmp_path / "runs" / "run" / "annotated.mp4") and s.sink.append and s.sink.run_id
    again = launch.prepare(run_args("--source", "0", "--name", "cam"), tmp_path)
    assert not (tmp_path / "runs").exists()  # made by the run once its input passed the checks
    (tmp_path / "runs" / "cam").mkdir(parents=True)
    third = launch.prepare(run_args("--source", "0", "--name", "cam"), tmp_path)
    assert again.capture.source == ["0"] and again.sink.run_id != third.sink.run_id
    assert (again.sink.events, third.sink.events) == (str(tmp_path / "runs" / "cam" / "events.jsonl"),
                                                      str(tmp_path / "runs" / "cam2" / "events.jsonl"))
    given = launch.prepare(run_args("--source", "rtsp://cam/1", "--events", "e.jsonl", "--overwrite"), tmp_path)
    assert (given.capture.source, given.sink.events, given.sink.save, given.sink.append) == \
        (["rtsp://cam/1"], str(tmp_path / "e.jsonl"), None, False)
    assert not (tmp_path / "runs" / "run2").exists()  # an explicit output makes no run folder


@pytest.mark.parametrize("models, target", [
    (("--detector", "diffusiondet_r50"), "detect"),  # embedder efficientnet_lite0 ships its weights
    (("--embedder", "dino_vits16"), "embed"),  # detector ssd_mobilenet_v2 ships its weights
    (("--detector", "diffusiondet_r50", "--embedder", "dino_vits16"), None),  # ambiguous
    ((), None),  # both packaged: nothing takes --weights
])
def test_weights_flag_goes_to_the_model_without_packaged_weights(tmp_path, models, target):
    args = run_args("--source", "v.avi", "--weights", "w.pth", *models)
    if target is None:
        with pytest.raises(ConfigError, match="--weights is ambiguous"):
            launch.prepare(args, tmp_path)
        return
    s = launch.prepare(args, tmp_path)
    assert getattr(s, target).weights == str(tmp_path / "w.pth")
    assert getattr(s, "embed" if target == "detect" else "detect").weights is None


def test_config_digest_ignores_outputs_and_identity_but_not_knobs():
    a = load(None, {"sink.events": "a.jsonl", "sink.run_id": "x", "gate.memory": "/tmp/m.npz"})
    b = load(None, {"sink.save": "b.mp4", "sink.run_id": "y"})
    assert a.digest() == b.digest() != load(None, {"cluster.k": 10}).digest()


def test_the_log_appends_by_default_and_stamps_the_run(tmp_path):
    path = tmp_path / "ev.jsonl"
    for run in ("r1", "r2"):
        log = EventLog(str(path), append=True, run=run)
        log.write({"type": "frame", "ts": 1.0, "run": "forged", "frame": 0})
        log.close()
    recs = read_log(path)
    assert [r["run"] for r in recs] == ["r1", "r2"] and list(recs[0]) == ["type", "ts", "run", "frame"]
    EventLog(str(path), append=False, run="r3").close()
    assert read_log(path) == []


def test_schema_is_strict_per_record_type():
    v = validator()
    ok = {"type": "frame", "ts": 1.0, "run": "r", "source": "s", "frame": 0, "detections": 0}
    assert v.is_valid(ok)
    assert not v.is_valid({**ok, "surprise": 1})           # an undocumented field
    assert not v.is_valid({k: x for k, x in ok.items() if k != "run"})
    assert not v.is_valid({**ok, "type": "no_such_type"})
    assert not v.is_valid({"type": "stage_started", "ts": 1.0, "run": "r", "stage": "sink", "pid": 1, "frame": 0})


def test_tally_follows_classes_drops_and_losses(tmp_path):
    settings = load(None, {"sink.status": str(tmp_path / "status.json"), "sink.events": "e.jsonl"})
    t = Tally(settings)
    for rec in ({"type": "class_discovered", "class": "novel-1"}, {"type": "class_discovered", "class": "novel-2"},
                {"type": "class_renamed", "class": "cyclist", "old": "novel-1"},
                {"type": "class_merged", "class": "cyclist", "merged": "novel-2"},
                {"type": "frame_dropped", "stage": "capture", "total": 4}, {"type": "frame_dropped", "stage": "capture", "total": 9},
                {"type": "frame_dropped", "stage": "detect", "total": 2}, {"type": "frames_lost", "count": 3}):
        t.on_event(rec)
    t.on_frame(time.time())
    t.status(0, 1, done=True)
    st = json.loads((tmp_path / "status.json").read_text())
    assert (st["classes"], st["dropped"], st["lost"], st["frames"], st["rejected"], st["done"]) == \
        (["cyclist"], 11, 3, 1, 1, True)
    summary = t.summary(0, 1, "end")
    assert validator().is_valid({**summary, "run": "r"}), list(validator().iter_errors({**summary, "run": "r"}))


class Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("tty", [False, True])
def test_progress_reads_the_status_file_and_prints_a_summary(tmp_path, tty):
    status = tmp_path / "status.json"
    settings = load(None, {"sink.status": str(status), "sink.events": str(tmp_path / "e.jsonl"), "sink.run_id": "abc"})
    err, out = (Tty() if tty else io.StringIO()), io.StringIO()
    p = Progress(settings, total=40, stream=err)
    p.tick()
    status.write_text(json.dumps({"frames": 12, "fps": 3.0, "dropped": 0, "lost": 0, "rejected": 0,
                                  "classes": ["novel-1"], "done": False}))
    p.read_at = p.line_at = 0.0
    p.tick()
    p.stopping()
    p.finish(130, out=out)
    shown = err.getvalue()
    assert ("12/40" in shown) and "classes 1" in shown and "Ctrl-C again" in shown
    summary = out.getvalue()
    assert "abc stopped" in summary and "12 of 40" in summary and "novel-1" in summary and "e.jsonl" in summary


def test_with_several_sources_the_summary_names_each_annotated_video(tmp_path):
    from stages.tally import run_started
    sources = [str(tmp_path / "a" / "vtest.avi"), str(tmp_path / "b" / "bikes.mp4")]
    settings = load(None, {"capture.source": sources, "sink.status": str(tmp_path / "status.json"),
                           "sink.events": str(tmp_path / "e.jsonl"), "sink.save": str(tmp_path / "annotated.mp4")})
    want = {sources[0]: str(tmp_path / "annotated-vtest.mp4"), sources[1]: str(tmp_path / "annotated-bikes.mp4")}
    v = validator()
    for rec in (run_started(settings), Tally(settings).summary(0, 0, "end")):
        assert rec["outputs"]["videos"] == want and v.is_valid({**rec, "run": "abc"}), rec  # the sink adds "run"
    out = io.StringIO()
    Progress(settings, total=None, stream=io.StringIO()).finish(0, out=out)
    line = next(x for x in out.getvalue().splitlines() if x.strip().startswith("video"))
    assert "annotated-vtest.mp4" in line and "annotated-bikes.mp4" in line and "*" not in line


def test_the_last_status_line_gives_the_whole_runs_rate_not_the_drains(tmp_path):
    """A drain adds no frames: the final line's rate is frames over the whole run, never 0.0."""
    status = tmp_path / "status.json"
    settings = load(None, {"sink.status": str(status), "sink.events": str(tmp_path / "e.jsonl")})
    err = io.StringIO()
    p = Progress(settings, total=40, stream=err)
    status.write_text(json.dumps({"frames": 40, "fps": 4.0, "classes": [], "done": True}))
    p.started -= 10.0  # the run began 10 s ago
    p.read_at = p.line_at = 0.0
    p.tick()  # a status line with the 40 frames; then nothing new until the end
    p.finish(0, out=io.StringIO())
    last = err.getvalue().strip().splitlines()[-1]
    assert "40/40 frames" in last and " 0.0 fps" not in last
    assert 3.5 < float(last.split(" fps")[0].rsplit(" ", 1)[1]) <= 4.0


def test_owd_run_from_another_folder_writes_runs_and_prints_the_summary(bikes_video, tmp_path):
    """The done-when run, shortened: relative source, no output flags, from a folder outside the repo."""
    (tmp_path / "clip.mp4").symlink_to(bikes_video)
    args = ("run", "--source", "clip.mp4", "--headless", "--max-frames", "12")
    result = owd(*args, cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "runs" / "run"
    assert (folder / "annotated.mp4").stat().st_size > 0
    recs = read_log(folder / "events.jsonl")
    assert "12 of 12" in result.stdout and "runs/run/events.jsonl" in result.stdout
    assert "runs/run/annotated.mp4" in result.stdout and "12/12 frames" in result.stderr  # the last status line
    v = validator()
    for rec in recs:
        assert v.is_valid(rec), (rec, [e.message for e in v.iter_errors(rec)])
    assert recs[0]["type"] == "run_started" and recs[-1]["type"] == "run_summary"
    assert len({r["run"] for r in recs}) == 1 and recs[0]["source"] == [str(tmp_path / "clip.mp4")]
    assert recs[-1]["frames"] == 12 and sorted(r["frame"] for r in recs if r["type"] == "frame") == list(range(12))
    assert recs[0]["outputs"] == {"events": str(folder / "events.jsonl"), "save": str(folder / "annotated.mp4"),
                                  "videos": {str(tmp_path / "clip.mp4"): str(folder / "annotated.mp4")}}

    again = owd(*args, "--events", "runs/run/events.jsonl", cwd=tmp_path, timeout=400)  # appends to the first log
    assert again.returncode == 0, again.stderr[-3000:]
    recs = read_log(folder / "events.jsonl")
    assert len({r["run"] for r in recs}) == 2 and sum(r["type"] == "frame" for r in recs) == 24
    assert not (tmp_path / "runs" / "run2").exists()
