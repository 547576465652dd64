"""The command line explains itself: every option of every subcommand has a help line that
states its default, ``run``'s own defaults are the ones its help shows, ``run --out`` follows
the data's name, and ``--version`` answers."""

import argparse
import re

import pytest

from ppl_vae import __version__
from ppl_vae.cli import main
from ppl_vae.cli.main import RUN_BATCH_SIZE, RUN_LR, build_parser, run_folder


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def _help_of(command: argparse.ArgumentParser, action) -> str:
    """The help text of one option as ``--help`` prints it (defaults filled in)."""
    text = command._get_formatter()._get_help_string(action)
    return text % {**vars(action), "prog": command.prog, "default": action.default}


def _documented(command):
    return [a for a in command._actions
            if not isinstance(a, argparse._HelpAction | argparse._VersionAction)]


def test_every_option_of_every_subcommand_has_help_and_shows_its_default():
    parser, commands = _commands()
    assert {"train", "run", "evaluate", "diagnose", "report", "verify"} <= set(commands)
    missing_help, missing_default = [], []
    for name, command in [("ppl-vae", parser), *commands.items()]:
        command.format_help()  # every %(default)s interpolates
        for action in _documented(command):
            if isinstance(action, argparse._SubParsersAction):
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not (action.help or "").strip():
                missing_help.append(label)
                continue
            flag = action.nargs == 0  # on/off switches: off unless given
            if action.option_strings and not flag and not action.required:
                if "default" not in _help_of(command, action):
                    missing_default.append(label)
    assert not missing_help, f"options without help: {missing_help}"
    assert not missing_default, f"options whose help hides the default: {missing_default}"


def test_the_shown_default_is_the_one_used():
    # run's own defaults (set on its parser) are what its help shows, and what it parses to.
    _, commands = _commands()
    for name, expected in (("run", {"--lr": RUN_LR, "--batch-size": RUN_BATCH_SIZE,
                                    "--epochs": "auto", "--lr-schedule": "plateau"}),
                           ("train", {"--lr": 1e-3, "--batch-size": 128, "--epochs": 30,
                                      "--lr-schedule": None})):
        command = commands[name]
        parsed = vars(command.parse_args([] if name == "run" else ["--out", "x"]))
        for option, value in expected.items():
            action = next(a for a in command._actions if option in a.option_strings)
            assert parsed[action.dest] == value, (name, option)
            shown = re.search(r"\(default: ([^)]*)\)", _help_of(command, action)).group(1)
            assert shown == ("none" if value is None else str(value)), (name, option, shown)
    assert "--lr 0.003" in commands["run"].description  # said in prose as well
    assert "runs/<data name>" in commands["run"].format_help()


@pytest.mark.parametrize("data, folder", [
    ("digits", "runs/digits"), ("linear_gaussian", "runs/linear_gaussian"),
    ("mnist:/data/mnist", "runs/mnist"), ("/tmp/cells/counts.npy", "runs/counts"),
    ("tables/x.csv", "runs/x"), ("programs/load.py:cells", "runs/load"),
])
def test_run_out_defaults_to_the_data_name(data, folder):
    assert run_folder(data).as_posix() == folder
    _, commands = _commands()
    assert commands["run"].parse_args(["--data", data]).out is None  # resolved by cmd_run


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"ppl-vae {__version__}"
