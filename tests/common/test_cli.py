"""common.cli: both flag spellings, one-line errors with exit status 2, shared argument groups."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from common import cli


def make_parser(add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="demo.py", add_help=add_help)
    cli.add_run_args(p, seed=3)
    cli.add_fed_args(p, num_clients=4, rounds=2)
    p.add_argument("--lora_r", type=int, default=8, help="LoRA rank")
    p.add_argument("-k", "--local-updates", type=int, default=1, help="local steps")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--use-bf16", action="store_true", help="bf16")
    g.add_argument("--use_fp16", action="store_true", help="fp16")
    return p


@pytest.mark.parametrize("flag,dest,value", [
    ("num-clients", "num_clients", 7), ("participation-rate", "participation_rate", 0.5),
    ("eval-every", "eval_every", 3), ("out-dir", "out_dir", "somewhere"), ("run-name", "run_name", "x"),
    ("lora-r", "lora_r", 16), ("local-updates", "local_updates", 5)])
def test_both_spellings_parse_to_the_same_dest(flag, dest, value):
    kebab = cli.parse(make_parser(), [f"--{flag}", str(value)])
    snake = cli.parse(make_parser(), [f"--{flag.replace('-', '_')}", str(value)])
    assert getattr(kebab, dest) == getattr(snake, dest) == value
    assert vars(kebab) == vars(snake)


def test_defaults_short_flags_and_groups():
    args = cli.parse(make_parser(), [])
    assert (args.seed, args.num_clients, args.rounds, args.lora_r, args.local_updates) == (3, 4, 2, 8, 1)
    assert (args.device, args.out_dir, args.run_name) == ("auto", "runs", None)
    assert not (args.quick or args.quiet or args.resume or args.use_bf16 or args.use_fp16)
    assert cli.parse(make_parser(), ["-k", "9", "--quick", "--use_bf16"]).local_updates == 9
    assert cli.parse(make_parser(), ["--use-fp16"]).use_fp16


def test_parents_keep_both_spellings():
    child = cli.ArgumentParser(prog="child.py", parents=[make_parser(add_help=False)])
    child.add_argument("--extra_flag", type=float, default=1.0, help="x")
    args = cli.parse(child, ["--num_clients", "2", "--extra-flag", "0.5"])
    assert args.num_clients == 2 and args.extra_flag == 0.5


def _error_of(parser, argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse(parser, argv)
    err = capsys.readouterr().err
    return e.value.code, err


@pytest.mark.parametrize("argv,phrase", [
    (["--seed", "abc"], "invalid int value"),
    (["--num-cl", "3"], "unrecognized arguments"),  # no abbreviations
    (["--bogus"], "unrecognized arguments"),
    (["--use-bf16", "--use-fp16"], "not allowed with"),
    (["--lora_r"], "expected one argument"),
    (["--num-clients", "0"], "--num-clients must be at least 1, got 0"),  # the federation flags' own types
    (["--rounds", "0"], "--rounds must be at least 1, got 0"),
    (["--participation-rate", "0"], "--participation-rate must be in (0, 1], got 0.0"),
    (["--participation-rate", "1.5"], "--participation-rate must be in (0, 1], got 1.5"),
    (["--eval-every", "0"], "--eval-every must be at least 1, got 0"),
])
def test_parse_errors_are_one_line_exit_2(argv, phrase, capsys):
    code, err = _error_of(make_parser(), argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("demo.py: error:") and phrase in err


def test_check_and_resolve_device():
    cli.check(True, "never")
    with pytest.raises(cli.UsageError, match="^boom$"):
        cli.check(False, "boom")
    assert cli.resolve_device("cpu") == torch.device("cpu")
    assert cli.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(cli.UsageError, match="not a device"):
        cli.resolve_device("potato")
    for name in ("mps", "xpu", "meta", "xla:0"):  # devices torch names but the project does not run on
        with pytest.raises(cli.UsageError, match=f"{name.split(':')[0]} device is not supported"):
            cli.resolve_device(name)
    with pytest.raises(cli.UsageError, match="CUDA"):
        cli.resolve_device(f"cuda:{torch.cuda.device_count()}")
    if not torch.cuda.is_available():
        with pytest.raises(cli.UsageError, match="CUDA is not available"):
            cli.resolve_device("cuda:0")


def test_run_turns_usage_error_into_one_line_exit_2(capsys):
    def main(argv=None):
        raise cli.UsageError("--data-dir /nope does not exist; expected a folder with train.tsv")
    with pytest.raises(SystemExit) as e:
        cli.run(main)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("error: --data-dir /nope does not exist; expected a folder "
                                                 "with train.tsv\n")


def test_run_passes_argv_and_reports_interrupts(capsys):
    seen = []
    cli.run(lambda argv: seen.append(argv), ["--x"])
    assert seen == [["--x"]]

    def interrupted(argv=None):
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as e:
        cli.run(interrupted)
    assert e.value.code == 130 and "--resume" in capsys.readouterr().err


def test_run_exits_with_the_status_main_returns():
    """A study's main returns 1 when not every run finished: the script's exit status; 0, None or a result
    (a dict, a bool) end normally."""
    for result in (0, None, {"cells": 3}, True):
        cli.run(lambda argv, r=result: r)
    with pytest.raises(SystemExit) as e:
        cli.run(lambda argv: 1)
    assert e.value.code == 1


SCRIPT = textwrap.dedent("""
    from common import cli
    def get_args_parser():
        p = cli.ArgumentParser(prog="script.py")
        cli.add_run_args(p)
        cli.add_fed_args(p)
        return p
    def main(argv=None):
        args = cli.parse(get_args_parser(), argv)
        print("ok", args.num_clients)
        return {}
    if __name__ == "__main__":
        cli.run(main)
""")


def test_script_process_exit_status_and_single_stderr_line(tmp_path):
    """A real process (importing torch takes seconds, so one run): the snake_case flag parses, then
    validation fails with exactly one stderr line, no traceback, exit status 2."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), "--num_clients", "3", "--participation-rate", "2"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "script.py: error: --participation-rate must be in (0, 1], got 2.0\n"


def test_numbers_must_be_finite_and_integers_integral(capsys):
    p = cli.ArgumentParser(prog="t")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--weights", type=float, nargs="+", default=None)
    assert cli.parse(p, ["--weights", "1", "2"]).weights == [1.0, 2.0]
    for argv, expect in ((["--lr", "nan"], "--lr: expected a finite number"),
                         (["--lr", "inf"], "--lr: expected a finite number"),
                         (["--weights", "inf", "1"], "--weights: expected a finite number")):
        with pytest.raises(SystemExit) as e:
            cli.parse(p, argv)
        assert e.value.code == 2 and expect in capsys.readouterr().err
    p.set_defaults(rounds=2.5)  # what a YAML config's ``num_rounds: 2.5`` does
    with pytest.raises(SystemExit):
        cli.parse(p, [])
    assert "--rounds: expected an integer, got 2.5" in capsys.readouterr().err
    p.set_defaults(rounds=4.0, lr=1)
    ns = cli.parse(p, [])
    assert ns.rounds == 4 and isinstance(ns.rounds, int) and ns.lr == 1.0 and isinstance(ns.lr, float)


def test_diverged_exits_3_with_one_line(capsys):
    def main(argv):
        raise cli.Diverged("non-finite loss at round 3")

    with pytest.raises(SystemExit) as e:
        cli.run(main, [])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 3 and "\n" not in err and "round 3" in err


def test_overwrite_has_both_spellings():
    p = cli.ArgumentParser()
    cli.add_run_args(p)
    for flag in ("--overwrite", "--overwrite_output_dir", "--overwrite-output-dir"):
        assert cli.parse(p, [flag]).overwrite


def test_help_shows_real_defaults_and_never_none(capsys):
    """`(default: X)` only where X is a value: a None default (the script decides) or a switch's False says
    nothing, and a help text that already names its default is not repeated."""
    p = cli.ArgumentParser(prog="x")
    p.add_argument("--steps", type=int, default=3, help="steps")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default: from --epochs)")
    p.add_argument("--name", default=None, help="run name")
    p.add_argument("--fast", action="store_true", help="go fast")
    text = " ".join(p.format_help().split())
    assert "steps (default: 3)" in text and "rounds (default: from --epochs)" in text
    assert "None" not in text and "False" not in text


def test_vit_help_states_the_preset_defaults():
    from vit_sparse_fl import train_federated
    text = " ".join(train_federated.get_args_parser().format_help().split())
    assert "communication rounds (default: 300; --quick: 8)" in text and "(default: None)" not in text
