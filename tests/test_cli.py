"""The command line's own surface: help for every verb, no verb, unknown verbs."""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import bloodcell
from bloodcell.cli.main import _verbs, build_parser, main

SRC = Path(__file__).resolve().parents[1] / "src"


def test_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for verb in _verbs():
        assert f"    {verb}" in out
    assert "95% CIs" in out  # a verb's help with a literal percent sign


def test_no_arguments_prints_help(capsys):
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out


@pytest.mark.parametrize("verb", sorted(_verbs()))
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("usage: bloodcell " + verb)


def test_help_from_a_fresh_process():
    run = subprocess.run([sys.executable, "-m", "bloodcell", "--help"], capture_output=True, text=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr


def test_unknown_verb_suggests_the_closest(capsys):
    assert main(["predcit"]) == 2
    assert "Did you mean 'predict'" in capsys.readouterr().err


def test_command_list_loads_no_verb_library():
    code = ("import sys\nfrom bloodcell.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'onnxruntime', 'matplotlib', 'timm') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_verb_help_loads_no_network_library():
    """Each verb's --help is read at once: none loads PyTorch for it (export did, 7 s, before its
    choices moved; train and pipeline did, 6-7 s, before the training package loaded lazily)."""
    from bloodcell.cli.main import _verbs

    verbs = sorted(_verbs())
    code = ("import sys\nfrom bloodcell.cli.main import main\nfor verb in sys.argv[1:]:\n"
            "    try:\n        main([verb, '--help'])\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'onnxruntime', 'timm') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code, *verbs], capture_output=True, text=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert run.returncode == 0, run.stderr
    assert {"export", "train", "pipeline"} <= set(verbs) and run.stdout.strip().splitlines()[-1] == "[]"


#: Flags that only choose what the command line prints; the Python functions return objects.
PRINTING = {"json", "quiet", "no_progress", "show_config", "list_recipes"}


@pytest.mark.parametrize("verb", sorted(_verbs()))
def test_every_option_reaches_the_python_verb(verb):
    """Each command-line option of a verb is a parameter of ``bloodcell.<verb>`` (for ``predict``,
    or of the Classifier it opens; ``train``'s config keys are its ``overrides``)."""
    parser = build_parser(_verbs(), only=verb)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
    options = {a.dest for a in sub._actions if a.dest != "help"} - PRINTING
    params = set(inspect.signature(getattr(bloodcell, verb.replace("-", "_"))).parameters)
    if verb == "predict":
        params |= set(inspect.signature(bloodcell.Classifier).parameters)
    if verb == "train":
        options = {o for o in options if not o.startswith("cfg__") and o != "set"}
    assert options <= params, f"bloodcell {verb} options missing from bloodcell.{verb}: {sorted(options - params)}"


@pytest.mark.parametrize("argv, said", [
    (["audit", "{tmp}/none", "--workers", "0"], "--workers must be at least 1"),
    (["split", "{tmp}/none", "-o", "{tmp}/s.csv", "--workers", "-1"], "--workers must be at least 1"),
    (["cache", "{tmp}/none", "--workers", "0"], "--workers must be at least 1"),
    (["evaluate", "{tmp}/none", "{tmp}/none", "--bootstrap", "-1"], "--bootstrap must be 0 or more"),
    (["compare", "{tmp}/none", "--data", "{tmp}/none", "--bootstrap", "-1"], "--bootstrap must be 0 or more"),
    (["report", "{tmp}/none", "{tmp}/none", "-o", "{tmp}/r", "--gradcam-per-class", "-1"],
     "--gradcam-per-class must be 0 or more"),
    (["report", "{tmp}/none", "{tmp}/none", "-o", "{tmp}/r", "--mistakes", "-2"], "--mistakes must be 0 or more"),
    (["serve", "--threads", "0"], "--threads must be at least 1"),
    (["pipeline", "default", "--data", "{tmp}/s.csv", "--default-run", "{tmp}/run", "--jobs", "0"],
     "--jobs must be at least 1"),
    (["pipeline", "default", "--data", "{tmp}/s.csv", "--default-run", "{tmp}/run", "--timeout", "-5"],
     "--timeout is the seconds a member may train"),
])
def test_counts_out_of_range_are_one_line_before_any_work(argv, said, tmp_path, capsys):
    """A negative bootstrap count was a traceback; 0 or negative workers, jobs and threads, and a negative
    timeout (members stopped at once) ran without a word."""
    (tmp_path / "s.csv").write_text("path,label,split\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv"]
