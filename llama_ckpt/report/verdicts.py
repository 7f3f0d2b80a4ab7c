"""The claims' verdicts for reading: a table and the claims phase's findings
(the verdicts themselves are :mod:`llama_ckpt.study.claims`')."""

from __future__ import annotations

import pandas as pd

from ..study.claims import FAILS, HOLDS, UNSURE


def verdict_table(results: list[dict]) -> pd.DataFrame:
    """The claims for reading: verdict, the repeats it rests on, the measured ratios with their intervals."""
    if not results:
        return pd.DataFrame()
    cols = [c for c in ("claim", "weights", "verdict", "repeats", "text", "measured") if c in results[0]]
    return pd.DataFrame(results)[cols].set_index(["claim", "weights"])


def decided_findings(results: list[dict], rounds: list[dict], cap: int, stopped: str | None = None) -> str:
    """What the claims' phase found: the verdicts, the repeats they rest on, what the rounds added."""
    if not results:
        return "No claim could be judged: no row of the guide's approaches in this run."
    lines = []
    for v in (HOLDS, FAILS, UNSURE):
        got = [f"{r['claim']} ({r['weights']}, {r['repeats']} repeats)" for r in results if r["verdict"] == v]
        lines.append(f"- **{v}**: {', '.join(got) or 'none'}.")
    at_cap = [r for r in results if r["verdict"] == UNSURE and r["repeats"] >= cap]
    missing = [r for r in results if r["verdict"] == UNSURE and r["repeats"] == 0]
    if at_cap:
        lines.append(f"- Inconclusive with {cap} repeats (the cap): "
                     + ", ".join(f"{r['claim']} ({r['weights']})" for r in at_cap)
                     + ": the interval still straddles the threshold, an effect too close to it to decide here.")
    if missing:
        lines.append("- Not judged (an approach it compares was not measured in this run): "
                     + ", ".join(f"{r['claim']} ({r['weights']})" for r in missing) + ".")
    if rounds:
        lines.append(f"- {len(rounds)} round(s), {sum(r['added'] for r in rounds)} added measurements: " + "; ".join(
            f"round {r['round']} on {r['weights']} weights, {', '.join(r['approaches'])} to {r['target']} repeats"
            for r in rounds) + ".")
    else:
        lines.append("- No round was needed: every claim was decided by the phases' own repeats.")
    if stopped:
        lines.append(f"- Rounds stopped early: {stopped}; the claims still undecided read inconclusive at the repeats "
                     "they had, not at the cap.")
    return "\n".join(lines)
