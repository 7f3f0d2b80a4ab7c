"""``python -m llama_ckpt project``: cost cards and one node's profile projected to a workload
(:mod:`llama_ckpt.results.projection`). An MLPerf Storage workload needs neither torch nor the formats, so
``__main__`` runs it from here alone and it answers at once; a preset's weights (``PRESET:RANKS``) need the
model and the formats, which :mod:`llama_ckpt.cli` hands in (``preset``). Also the parts of the command line
both share."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable

from .errors import Parser, UserError
from .results import projection, work
from .results.profile import MachineProfile

PROG = "python -m llama_ckpt"


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def cards_and_profile(card_paths: list[str], profile: str) -> tuple[list, MachineProfile]:
    cards, _measured_on = work.read_cards([Path(p) for p in card_paths])
    if not cards:
        raise UserError(f"no cost cards in {', '.join(card_paths)}: no verified single-process row counted its work")
    prof_path = Path(profile)
    try:
        prof = MachineProfile.read(prof_path)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise UserError(f"--profile {prof_path}: not a machine profile ({exc})") from None
    if prof is None:
        raise UserError(f"--profile {prof_path}: no such file")
    return cards, prof


def lacks_rates(profile: str) -> UserError:
    return UserError(f"--profile {profile}: it lacks the rates the model needs (the page-cache write, the "
                     "fresh-memory fill, the disk, a file's create and an fsync): measure it with `profile`")


def _latest_cards(out: Path) -> str:
    runs = sorted((out / "runs").glob("*/cost-cards.json")) if (out / "runs").is_dir() else []
    if not runs:
        raise UserError(f"no cost cards under {out}/runs (a run's cost-cards.json): give --cards")
    return str(runs[-1])


# a preset's name -> (its ModelSource, a card -> the preset's payload as the card's approach stores it)
Preset = Callable[[str], tuple]


def cmd_project(args, preset: Preset | None = None) -> int:
    cards, prof = cards_and_profile(args.cards or [_latest_cards(Path(args.out))], args.profile)
    if args.workload in projection.WORKLOADS:
        w, payload = projection.WORKLOADS[args.workload], None
    elif preset is None:
        raise UserError(f"--workload {args.workload}: not one of {', '.join(projection.WORKLOADS)}")
    else:
        name, _, ranks = args.workload.rpartition(":")
        source, payload = preset(name) if name and ranks.isdigit() else (None, None)  # built once
        w = projection.workload(args.workload, lambda _name: source)
    if args.ranks_per_node:
        w = dataclasses.replace(w, ranks_per_node=args.ranks_per_node)
    got = projection.project(cards, prof, w, payload)
    if not any(p.rank for p in got):
        raise lacks_rates(args.profile)
    if args.json:
        print(json.dumps({"workload": dataclasses.asdict(w), "nodes": w.nodes, "ranks_per_node": w.on_node,
                          "measured": projection.MEASURED, "assumed": projection.assumed(w),
                          "projections": [projection.as_dict(p) for p in got]}, indent=1))
        return 0
    print(projection.text(w, got))
    return 0


def add_project_parser(sub, preset: Preset | None = None) -> None:
    s = sub.add_parser("project", help="each approach's save and load projected to an MLPerf Storage checkpoint "
                                       "workload from cost cards and one node's profile (docs/decisions.md#projection)")
    s.add_argument("--profile", required=True, metavar="FILE", help="one node's profile (`profile --out`)")
    s.add_argument("--cards", nargs="+", default=None, metavar="RESULTS",
                   help="a cost-card file or results .jsonl files (default: the latest run's cost-cards.json under "
                        "--out)")
    s.add_argument("--workload", required=True, metavar="WORKLOAD",
                   help=f"one of {', '.join(projection.WORKLOADS)}, or PRESET:RANKS (a model preset's weights on "
                        "RANKS ranks of one node)")
    s.add_argument("--ranks-per-node", type=positive_int, default=None, metavar="N",
                   help=f"ranks sharing one node (default: {projection.RANKS_PER_NODE}, MLPerf Storage's hosts)")
    s.add_argument("--out", default="saved_models", metavar="DIR", help="where the runs are (default: %(default)s)")
    s.add_argument("--json", action="store_true", help="print the projection as JSON")
    s.set_defaults(func=lambda args: cmd_project(args, preset))


def handles(argv: list[str]) -> bool:
    """Whether ``argv`` is ``project`` to one of MLPerf Storage's workloads, which this module runs alone (the
    last ``--workload`` given, as argparse takes it; anything else, help included, goes to :mod:`.cli`)."""
    if argv[:1] != ["project"]:
        return False
    last = None
    for i, a in enumerate(argv):
        if a == "--workload" and i + 1 < len(argv):
            last = argv[i + 1]
        elif a.startswith("--workload="):
            last = a.split("=", 1)[1]
    return last in projection.WORKLOADS


def main(argv: list[str]) -> int:
    """``project`` to an MLPerf workload, as :func:`llama_ckpt.cli.main` would run it."""
    parser = Parser(prog=PROG)
    add_project_parser(parser.add_subparsers(dest="command", required=True, parser_class=Parser))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
