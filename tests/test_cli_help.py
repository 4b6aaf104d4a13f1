"""Every command's ``--help``: it works, its description is one plain sentence or more (no
markup, not cut mid-sentence) and every option says what it does."""

from __future__ import annotations

import argparse
import re
from typing import Any

import pytest

from lungwatch.cli import COMMANDS, ROUTED, main, plain_summary

MARKUP = re.compile(r"``|:[a-z]+:`")


def parsers_shown(
    name: str, monkeypatch: pytest.MonkeyPatch, *sub: str
) -> list[argparse.ArgumentParser]:
    """The parsers whose help ``lungwatch NAME --help`` printed."""
    shown: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.print_help

    def record(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        shown.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", record)
    with pytest.raises(SystemExit) as exit_:
        main([name, *sub, "--help"])
    assert exit_.value.code in (0, None)
    return shown


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_is_complete_and_plain(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    [parser] = parsers_shown(name, monkeypatch)
    description = parser.description or ""
    assert description, f"lungwatch {name} has no description"
    assert not MARKUP.search(description), description
    assert description.rstrip().endswith((".", ")", ":")), f"cut short: {description!r}"
    silent = [
        "/".join(a.option_strings) or a.dest
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()
    ]
    assert silent == [], f"lungwatch {name}: no help for {silent}"


@pytest.mark.parametrize("command", sorted(ROUTED))
def test_a_routed_subcommand_runs_its_own_module(
    command: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    [parser] = parsers_shown(command[0], monkeypatch, command[1])
    assert parser.prog == f"lungwatch {command[0]} {command[1]}"
    assert parser.description
    assert not MARKUP.search(parser.description)
    assert all((a.help or "").strip() for a in parser._actions)


def test_a_summary_is_the_first_paragraph_without_markup() -> None:
    doc = """The ward's live picture (:class:`wardview.beds.Bed`), kept by
    :func:`~wardview.ward.Ward.take` from ``event`` messages.

        usage: ...
    """
    assert plain_summary(doc) == (
        "The ward's live picture (wardview.beds.Bed), kept by take from event messages."
    )


def test_the_readme_lists_every_command() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    listed = set(re.findall(r"^\| `([a-z]+)` \| `lungwatch", readme, re.M))
    assert listed == set(COMMANDS)
