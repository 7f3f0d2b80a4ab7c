"""``python -m llama_ckpt``: list, run, suite, load, verify, compare, profile, predict, project.

Under ``torchrun`` (see :mod:`llama_ckpt.bench.cluster`) ``run`` and
``load`` run as one rank of the launched job.

Bad input ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path

from . import fsutil
from .bench import cluster, hostmem, machine, measure, scaffold
from .bench.ranks import RankFailed
from .errors import Parser, UserError
from .projecting import add_project_parser, cards_and_profile, lacks_rates, positive_int
from .model import DEFAULT_PRESET, PRESETS, PUBLISHED_DTYPE, get_model
from .registry import APPROACHES, names, resolve
from .report import machine as machine_report
from .results import comparison_table, group_by_run, incomplete_runs, read_results, reference_line
from .results import work
from .results.text import BASELINE
from .store.server import local_server_dir
from .store import Location, Target, at
from .report import summary as summ
from .study.phases import PHASES
from .suite.runner import PhaseFailed, parse_sets, run_suite
from .verify import verify

DEFAULT_OUT = "saved_models"


def cmd_list(args) -> int:
    single, sharded = names(), names(sharded=True)
    width = max(map(len, APPROACHES))

    def line(name):
        a = APPROACHES[name]
        s3 = f" [not on S3: {a.s3_unsupported}]" if a.s3_unsupported else ""
        return f"{name.ljust(width)}  {a.description}{s3}"

    print("\n".join(line(n) for n in single))
    print("\nsharded, with --world-size N [--load-world-size M] (any N -> M):")
    print("\n".join(line(n) for n in sharded))
    return 0


def _storage(args) -> Location | None:
    """The S3 prefix of --storage/--s3-endpoint/--s3-delay-ms, or None (the local disk)."""
    if not args.storage or args.storage == "local":
        if args.s3_endpoint or args.s3_delay_ms:
            raise UserError("--s3-endpoint and --s3-delay-ms need --storage s3://BUCKET/PREFIX")
        return None
    if args.s3_delay_ms < 0:
        raise UserError(f"--s3-delay-ms must be >= 0, got {args.s3_delay_ms:g}")
    endpoint = args.s3_endpoint
    server_dir = local_server_dir(endpoint, [Path(args.out) / "s3", Path(DEFAULT_OUT) / "s3"]) if endpoint else None
    return Target.parse(args.storage, endpoint, delay_ms=args.s3_delay_ms, server_dir=server_dir).path()


def _launched_world(args) -> int | None:
    """Under a launcher: the job's world size (what --world-size must say, if anything)."""
    if not cluster.launched():
        return None
    world = int(os.environ["WORLD_SIZE"])
    if args.world_size and args.world_size != world:
        raise UserError(f"--world-size {args.world_size} under a launcher of {world} ranks: the launcher decides; "
                        "leave --world-size out")
    return world


def _on_cpus(n: int, argv: list[str]) -> None:
    """Run this command again on the first ``n`` CPUs this process may use (its affinity, which every thread of
    the new process inherits, as ``taskset`` does), unless it already runs on exactly those."""
    cpus = sorted(os.sched_getaffinity(0))
    if n > len(cpus):
        raise UserError(f"--cpus {n}: this process may run on {len(cpus)} CPU(s) only ({cpus})")
    if len(cpus) == n:
        return
    os.sched_setaffinity(0, cpus[:n])
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "llama_ckpt", *argv])


def cmd_run(args) -> int:
    if args.cpus:
        _on_cpus(args.cpus, args.argv)
    if args.load_world_size and not args.world_size and not cluster.launched():
        raise UserError("--load-world-size needs --world-size")
    launched_world = _launched_world(args)
    if launched_world and args.load_world_size and args.load_world_size != launched_world:
        raise UserError(f"a launched job loads on its own {launched_world} ranks; to load on "
                        f"{args.load_world_size}, keep the checkpoints (--keep) and start a job of that many "
                        "ranks running `python -m llama_ckpt load CHECKPOINT`")
    if launched_world and args.s3_delay_ms:
        raise UserError("--s3-delay-ms runs a proxy on this host's loopback, which the other nodes of a launched "
                        "job cannot reach; add the delay in the network instead (tc netem)")
    world = launched_world or args.world_size
    sharded = bool(world)
    approaches = resolve(args.approach, sharded=sharded)
    if args.model and args.model_path:
        raise UserError("give --model or --model-path, not both")
    if args.back_to_back == 1:
        raise UserError("--checkpoint-workload (--back-to-back) needs at least 2 checkpoints in a row")
    if sharded and args.back_to_back:
        raise UserError("--checkpoint-workload saves single-process checkpoints in a row; leave it out with "
                        "--world-size")
    if sharded and args.model_path:
        raise UserError("--world-size needs a model preset (--model): every rank builds its own rows of the "
                        "seeded weights; --model-path is not supported there")
    storage = _storage(args)
    source = get_model(args.model, args.model_path, seed=args.seed)
    group = cluster.join() if launched_world else None
    if group is not None and not group.lead:
        return cluster.serve(group)  # rank 0 prints and records; this rank does its part of every step
    opts = measure.Options(out=Path(args.out), repeats=args.repeats, keep=args.keep, warm=args.warm,
                           results=Path(args.results) if args.results else None, run_id=args.run_id,
                           storage=storage, world_size=world, load_world_size=args.load_world_size or None,
                           group=group, disk_reference=not args.no_reference,
                           disk_cap_Bps=args.disk_cap * 10**6 if args.disk_cap else None,
                           prepare=scaffold.parse_prepare(args.prepare),
                           **({"sustained": tuple(a.name for a in approaches), "sustained_saves": args.back_to_back}
                              if args.back_to_back else {}))
    with cluster.leading(group) if group is not None else contextlib.nullcontext(cluster.Outcome()) as outcome:
        env, rows = measure.run(approaches, source, opts,
                                on_row=lambda r: print(scaffold.row_line(r, detail=True), flush=True),
                                say=lambda s: print(s, flush=True))
        outcome.code = 0 if all(r.get("verified") for r in rows) else 1
    print()
    order = [a.name for a in approaches]  # each round ran in a random order; the table keeps the one asked for
    if sharded:
        print(comparison_table(rows, baseline="pytorch-per-rank", reference="dcp-sharded", order=order))
    else:
        print(comparison_table(rows, order=order))
    if env.get("reference_write_Bps"):
        print(reference_line(env))
    if env.get("machine") and not sharded:
        print(machine_report.bounds_findings(rows, env["machine"]))
    print(f"results: {env['results_path']}")
    return outcome.code


def _checkpoint_at(path: str, endpoint: str | None) -> Location | Path:
    if path.startswith("s3://"):
        bucket, _, key = path[len("s3://"):].partition("/")
        return Target.parse(f"s3://{bucket}", endpoint).path(key.strip("/"))
    return Path(path)


def cmd_load(args) -> int:
    locs = [at(_checkpoint_at(p, args.s3_endpoint)) for p in args.paths]
    if _launched_world(args):
        group = cluster.join()
        if not group.lead:
            return cluster.serve(group)
    elif not args.world_size:
        raise UserError("load needs --world-size N (ranks spawned here), or to be started by torchrun")
    else:
        group = None
    worst = 0
    with cluster.leading(group) if group is not None else contextlib.nullcontext(cluster.Outcome()) as outcome:
        for p, loc in zip(args.paths, locs):
            try:
                r = measure.load_sharded(loc, group=group, world=args.world_size)
            except UserError as exc:
                print(f"{p}: NOT LOADED: {exc}")
                worst = 1
                continue
            cold = {True: "cold", False: "eviction not confirmed", None: "server cache not evicted"}[r["load_cold"]]
            head = (f"{p}: {r['approach']} saved by {r['world_size']} ranks, loaded by {r['load_world_size']} "
                    f"on {r['nodes']} node(s)")
            if r["verified"]:
                reads = ", ".join(f"{x['read_s']:.2f}" for x in r["ranks_load"])
                print(f"{head} in {r['load_s']:.2f} s ({cold}; per-rank read s [{reads}]): verified, "
                      f"{r['bytes']:,} bytes match the same rows of the source ({r['model']})")
            else:
                print(f"{head}: NOT VERIFIED: {r['error']}")
                worst = 1
        outcome.code = worst
    return worst


def cmd_compare(args) -> int:
    loaded = read_results(Path(p) for p in args.results)
    for w in loaded.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if not loaded.measurements:
        raise UserError("no measurement rows in " + ", ".join(args.results))
    for run_id in incomplete_runs(loaded):
        print(f"warning: run {run_id} is incomplete (interrupted or still running): its rows are shown "
              "but it did not finish", file=sys.stderr)
    refs = {e["run_id"]: e for e in loaded.environments}
    for run_id, rows in group_by_run(loaded.measurements).items():
        env = refs.get(run_id, {})
        print(f"run {run_id}: model {rows[0].get('model')}, {rows[0].get('n_tensors')} tensors")
        print(comparison_table(rows, baseline=args.baseline, reference=args.reference))
        if env.get("reference_write_Bps"):
            print(reference_line(env))
        print()
    return 0


def cmd_suite(args) -> int:
    if args.phases.strip() in ("all", ""):
        ids = list(PHASES)
    elif args.phases.strip() == "none":
        ids = []
    else:
        ids = [p.strip() for p in args.phases.split(",") if p.strip()]
    try:
        run_id = run_suite(ids, model=args.model, model_path=args.model_path or "", repeats=args.repeats,
                           out_dir=args.out, run_id=args.run_id or "", keep=args.keep, summary=not args.no_summary,
                           sets=parse_sets(args.set), prepare=args.prepare)
    except PhaseFailed as exc:
        print(f"{exc}", file=sys.stderr)
        return 1
    if not args.no_summary:
        out = Path(args.out).resolve()
        print(f"\nThe 8-way table (run {run_id}):")
        print(summ.load(out, run_id).eight_way_text())
        print(f"\nchart: {out / summ.CHART_NAME}")
    return 0


def cmd_verify(args) -> int:
    worst = 0
    for p in args.paths:
        try:
            r = verify(_checkpoint_at(p, args.s3_endpoint))
        except UserError as exc:
            print(f"{p}: NOT OK: {exc}")
            worst = max(worst, 1)
            continue
        what = f"{r.n_tensors} tensors" + (f" in {r.n_shards} shards" if r.n_shards else "")
        if r.ok:
            print(f"{p}: OK: {r.approach}, {what}, {r.n_bytes:,} bytes match their digests")
        else:
            print(f"{p}: NOT OK: {r.approach}, {len(r.bad)} bad of {what}")
            for line in r.bad:
                print(f"  {line}")
            worst = 1
    return worst


def _prepare_option(s: argparse.ArgumentParser) -> None:
    s.add_argument("--prepare", default=",".join(scaffold.DEFAULT_PREPARE), metavar="LIST",
                   help="what the run may do to the machine outside its own files, as root: drop-caches (before "
                        "each save, write back every dirty page and drop the whole machine's page cache), trim "
                        "(before each save, discard the free space of the checkpoints' file system: fstrim), "
                        "hold-memory (while the run lasts, keep a virtual machine's free memory from its host: "
                        "no free page reporting; put back at its end); a comma-separated list, "
                        f"or none (default: {','.join(scaffold.DEFAULT_PREPARE)}). The run says at its start what it "
                        "does")


def _list_parser(sub) -> None:
    s = sub.add_parser("list", help="list the approaches, one per line")
    s.set_defaults(func=cmd_list)


def _run_parser(sub) -> None:
    s = sub.add_parser("run", help="save and load with each approach, measured and verified")
    s.add_argument("--approach", default="all", help="NAME[,NAME...] or 'all' (default: all); see 'list'")
    s.add_argument("--model", default=None,
                   help=f"model preset: {', '.join(PRESETS)} (default: {DEFAULT_PRESET}); seeded random weights, "
                        f"rounded to {PUBLISHED_DTYPE} as the real model is published (PRESET:float32: full mantissas)")
    s.add_argument("--model-path", default=None, metavar="DIR",
                   help="a local Hugging Face model folder (config.json + safetensors/.bin) instead of a preset")
    s.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"output directory for checkpoints and results (default: {DEFAULT_OUT})")
    s.add_argument("--repeats", type=positive_int, default=3, metavar="N",
                   help="timed save+load cycles per approach (default: 3)")
    s.add_argument("--results", default=None, metavar="FILE",
                   help="results file to append to (default: OUT/results/RUN_ID.jsonl)")
    s.add_argument("--run-id", default=None, help="run id recorded in every row (default: the start time)")
    s.add_argument("--keep", action="store_true",
                   help="keep each approach's last checkpoint (default: delete once measured)")
    s.add_argument("--warm", action="store_true", help="also time a warm load from the page cache")
    s.add_argument("--seed", type=int, default=0, help="seed of the preset's random weights (default: 0)")
    s.add_argument("--storage", default=None, metavar="s3://BUCKET/PREFIX",
                   help="write checkpoints to an S3 bucket instead of the local disk (credentials from the "
                        "AWS_* environment variables; none: unsigned requests)")
    s.add_argument("--s3-endpoint", default=None, metavar="URL", help="the S3 endpoint, e.g. what `make s3-up` prints")
    s.add_argument("--s3-delay-ms", type=float, default=0.0, metavar="MS",
                   help="add this round-trip delay between the client and the S3 server (a proxy on loopback)")
    s.add_argument("--checkpoint-workload", "--back-to-back", dest="back_to_back", type=positive_int, default=None,
                   metavar="N",
                   help="after the rounds, MLPerf Storage's checkpoint pattern on each approach: N saves in a row "
                        "with nothing between them (the sustained rate beside the isolated one; fewer where the disk "
                        "cannot hold N at once), then the N read back, each after its pages were evicted, every one "
                        "verified, then removed; 05 and the summary give them in MLPerf's unit (a checkpoint's GiB "
                        "over its time)")
    s.add_argument("--disk-cap", type=positive_int, default=None, metavar="MBPS",
                   help="cap the checkpoints' disk at MBPS MB/s (read and write) for the run, machine profile "
                        "included: a second state of this machine for the bounds' predictions. Needs root and "
                        "cgroup v1 blkio; it caps every process's I/O to that disk, and the disk's earlier "
                        "throttle is put back when the run ends")
    _prepare_option(s)
    s.add_argument("--cpus", type=positive_int, default=None, metavar="N",
                   help="run on the first N CPUs this process may use (its CPU affinity, as taskset sets it; the "
                        "machine profile's cores follow it): a state of this machine with fewer cores")
    s.add_argument("--world-size", type=positive_int, default=None, metavar="N",
                   help="save with N processes over torch.distributed (gloo), each holding a row shard of every "
                        "tensor; the approaches are then the sharded ones (see 'list')")
    s.add_argument("--no-reference", action="store_true",
                   help="skip the machine profile (on S3: the storage reference), when another run beside this one "
                        "measured it")
    s.add_argument("--load-world-size", type=positive_int, default=None, metavar="M",
                   help="load on M processes instead of N (resharding; default: N)")
    s.set_defaults(func=cmd_run)


def _suite_parser(sub) -> None:
    s = sub.add_parser("suite", help="execute the phase notebooks with papermill, then the summary")
    s.add_argument("--phases", default="all", help="all, none (summary only) or IDs: 00,4a,...,4f,05,06,07,08,09")
    s.add_argument("--model", default=DEFAULT_PRESET,
                   help=f"model preset: {', '.join(PRESETS)} ({PUBLISHED_DTYPE}-origin weights; PRESET:float32: full "
                        "mantissas)")
    s.add_argument("--model-path", default=None, metavar="DIR", help="a local Hugging Face model folder")
    s.add_argument("--repeats", type=positive_int, default=3, metavar="N", help="timed cycles per approach")
    s.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output directory (default: {DEFAULT_OUT})")
    s.add_argument("--run-id", default=None,
                   help="run id; the same id resumes a run, skipping complete phases (default: a new one, "
                        "or the latest run with --phases none)")
    s.add_argument("--keep", action="store_true", help="keep each approach's last checkpoint")
    s.add_argument("--no-summary", action="store_true", help="do not execute the summary notebook")
    _prepare_option(s)
    s.add_argument("--set", action="append", default=[], metavar="PHASE.NAME=VALUE",
                   help="a phase notebook's own parameter, e.g. 08.CLAIMS_BUDGET_S=120 or 4e.CLOUD_DELAYS_MS=[0,5] "
                        "(papermill --help-notebook notebooks/SLUG.ipynb lists them); repeatable")
    s.set_defaults(func=cmd_suite)


def _verify_parser(sub) -> None:
    s = sub.add_parser("verify", help="check checkpoints against the digests in their manifests")
    s.add_argument("paths", nargs="+", metavar="PATH", help="checkpoint directories, or s3://BUCKET/KEY prefixes")
    s.add_argument("--s3-endpoint", default=None, metavar="URL", help="the S3 endpoint of s3:// paths")
    s.set_defaults(func=cmd_verify)


def _load_parser(sub) -> None:
    s = sub.add_parser("load", help="load sharded checkpoints cold on any number of ranks, each checked "
                                    "against the same rows of its source")
    s.add_argument("paths", nargs="+", metavar="PATH", help="checkpoint directories, or s3://BUCKET/KEY prefixes")
    s.add_argument("--world-size", type=positive_int, default=None, metavar="N",
                   help="ranks to spawn on this host (under torchrun: the job's ranks; leave it out)")
    s.add_argument("--s3-endpoint", default=None, metavar="URL", help="the S3 endpoint of s3:// paths")
    s.set_defaults(func=cmd_load)


def _compare_parser(sub) -> None:
    s = sub.add_parser("compare", help="the comparison table from results files")
    s.add_argument("results", nargs="+", metavar="RESULTS", help="results .jsonl files")
    s.add_argument("--baseline", default=BASELINE,
                   help="approach the changes are measured against (default: %(default)s)")
    s.add_argument("--reference", default="pytorch", help="second approach to compare against (default: pytorch)")
    s.set_defaults(func=cmd_compare)


def cmd_profile(args) -> int:
    where = Path(args.dir)
    if not where.is_dir():
        raise UserError(f"--dir {where}: no such directory")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: no such directory {out.parent}")
    if out.is_dir():
        raise UserError(f"--out {out}: a directory; give the profile's file")
    tmp = out.with_name(out.name + ".tmp")
    try:
        nbytes = get_model(args.model).nbytes
        holding = hostmem.held(print) if args.hold_memory else contextlib.nullcontext()
        with fsutil.machine_lock(where), holding as held:
            # (the machine lock: a profile beside a run would measure it, and it this)
            if held and "touched_bytes" in held:
                print(f"memory: free memory kept from the host while profiling (page_reporting_order "
                      f"{held['reporting_order_found']} -> {held['reporting_order_set']}, put back after; the "
                      f"{held['touched_bytes'] / 1e9:.1f} GB available touched once, in {held['touch_s']:.1f} s)")
            got = machine.profile(where, nbytes, print)
        tmp.write_text(json.dumps(got.to_dict(), indent=1))
        os.replace(tmp, out)
    except OSError as exc:  # a full disk, a directory it may not write
        tmp.unlink(missing_ok=True)
        raise UserError(f"profile of {where}: {exc.strerror or exc} ({exc.filename or where})") from None
    for name, why in (got.not_measured or {}).items():
        print(f"not measured: {name}: {why}")
    print(f"machine profile of {where} ({got.fs_type}, {got.cores} cores) in {got.profile_s:.0f} s -> {out}")
    return 0


def _payload(source, c) -> int:
    """Model ``source``'s payload as ``c``'s approach's rows count it (its edge chunks too), else from the card's
    stored dtype."""
    if c.approach in APPROACHES:
        return sum(APPROACHES[c.approach].payload_bytes(s) for s in source.specs)
    return work.payload_of(source, c)


def _preset(name: str) -> tuple:
    """A preset's source and its payload per card, for ``project --workload PRESET:RANKS``."""
    source = get_model(name)
    return source, lambda c: _payload(source, c)


def cmd_predict(args) -> int:
    cards, prof = cards_and_profile(args.cards, args.profile)
    source = get_model(args.model) if args.model else None
    preds = [work.predict(c, prof, _payload(source, c) if source else c.payload_bytes) for c in cards]
    if not any(preds):
        raise lacks_rates(args.profile)
    if args.json:
        print(json.dumps([dataclasses.asdict(p) if p else {"approach": c.approach, "step": c.step,
                                                           "seconds": None, "why": "a rate the model needs"}
                          for c, p in zip(cards, preds)], indent=1))
        return 0
    print(work.prediction_text(cards, preds))
    return 0


def _profile_parser(sub) -> None:
    s = sub.add_parser("profile", help="measure this machine's profile (disk, page cache, memory, files, codecs) "
                                       "and write it as JSON")
    s.add_argument("--out", required=True, metavar="FILE", help="the profile's JSON file")
    s.add_argument("--dir", default=".", metavar="DIR",
                   help="the directory (its file system) to measure; scratch files there are removed after "
                        "(default: the current directory)")
    s.add_argument("--model", default=DEFAULT_PRESET, choices=list(PRESETS),
                   help="the model whose bytes size the writes (at most PROFILE_MAX_BYTES; default: %(default)s)")
    s.add_argument("--no-hold-memory", dest="hold_memory", action="store_false",
                   help="leave a virtual machine's free page reporting to its host as it is (by default, as root, "
                        "the profile keeps the free memory from the host while it measures, touching every "
                        "available page once first, and puts the setting back after: docs/decisions.md#host-memory)")
    s.set_defaults(func=cmd_profile)


def _predict_parser(sub) -> None:
    s = sub.add_parser("predict", help="each approach's save and load predicted from cost cards and a machine "
                                       "profile (docs/decisions.md#work-model-2)")
    s.add_argument("--cards", nargs="+", required=True, metavar="RESULTS",
                   help="a cost-card file (cost-cards.json of a run) or results .jsonl files to make them from")
    s.add_argument("--profile", required=True, metavar="FILE", help="the target machine's profile (`profile --out`)")
    s.add_argument("--model", default=None, choices=list(PRESETS),
                   help="the model to predict for (default: the size each card was measured on)")
    s.add_argument("--json", action="store_true", help="print the predictions as JSON")
    s.set_defaults(func=cmd_predict)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m llama_ckpt",
               description="Benchmark ways of storing LLaMA-shaped model weights: save, load, size, exactness.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    _list_parser(sub)
    _run_parser(sub)
    _suite_parser(sub)
    _verify_parser(sub)
    _load_parser(sub)
    _compare_parser(sub)
    _profile_parser(sub)
    _predict_parser(sub)
    add_project_parser(sub, _preset)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RankFailed as exc:  # a launched job's rank: the launcher stops the others
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted; rows written so far are kept", file=sys.stderr)
        return 130
