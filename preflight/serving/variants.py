"""A lane's variants: the first, in the manifest's order, that fits this node is the one served.

Each candidate (the lane as written, named `primary`, then its `variants:`) is judged by fit from
whatever tells its model facts here: its files on the volume, the lock, or (in sync) its source's
headers read in part. A candidate fit refuses is passed over with its reason; the first that is
not refused is chosen, and one whose fit cannot be judged yet (no files, no lock, no GPU seen)
is chosen too: nothing says it does not fit. When every candidate is refused, the lane is the
primary, and not ready.

A choice that rests on judged figures is remembered in the receipts with this node's identity
(`accel.node_key`) and the candidates' definitions: a later `check`, `env` or `sync` on the same
node takes it without reading anything; another node, or an edited variant, judges again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from ..manifest import PRIMARY, Lane
from .inputs import FitInputs, evaluate
from ..record import record

Inputs = Callable[[Lane], "tuple[FitInputs | None, str | None]"]  # a candidate -> (its fit inputs, or why there are none)


def candidates(lane: Lane) -> list[Lane]:
    return [lane, *lane.variants]


def name_of(lane: Lane) -> str:
    return lane.variant or PRIMARY


def definition(lane: Lane) -> str:
    """What the choice depends on in the manifest: every candidate's name, place, source and serve flags."""
    spec = [(name_of(c), c.kind, c.path, c.source.raw if c.source else None, c.serve.engine if c.serve else None,
             c.serve.args if c.serve else None, c.serve.version if c.serve else None) for c in candidates(lane)]
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:16]


@record
class Judged:
    lane: Lane
    verdict: str  # fits | tight | does-not-fit | unknown | not judged
    codes: list[str]
    reason: str | None
    inputs_from: str | None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"variant": name_of(self.lane), "path": self.lane.path,
                             "source": self.lane.source.raw if self.lane.source else None, "verdict": self.verdict}
        if self.codes:
            d["codes"] = self.codes
        if self.reason:
            d["reason"] = self.reason
        if self.inputs_from:
            d["inputs_from"] = self.inputs_from
        return d


def judge(lane: Lane, inputs_of: Inputs, accel) -> Judged:
    inputs, why = inputs_of(lane)
    fit = evaluate(inputs, lane.serve, accel) if lane.serve is not None else None
    if fit is None:
        return Judged(lane, "not judged", [], why or "no model facts to judge it by", None)
    errors = [p for p in fit.problems if p.is_error]
    reason = errors[0].message if errors else next((p.message for p in fit.problems if p.code == "fit-unknown"), None)
    return Judged(lane, fit.verdict, [p.code for p in errors], reason, fit.figures.get("inputs_from"))


@record
class Choice:
    lane: Lane  # the candidate chosen
    report: dict[str, Any]  # the lane's `variant` object in the report
    record: dict[str, Any] | None = None  # what to remember (a choice judged now, on a node that can be named)


def choose(lane: Lane, node, inputs_of: Inputs, receipts) -> Choice:
    """The candidate of `lane` this node serves (see the module docstring). `node` is a
    serving.lane.NodeAccelerator; `receipts` holds the remembered choices."""
    cands = candidates(lane)
    key = node.key()
    accel = node.get()
    described = accel.describe() if accel is not None else None
    defn = definition(lane)
    rec = receipts.variant(lane.name)
    if rec is not None and key is not None and rec.get("node") == key and rec.get("definition") == defn:
        chosen = next((c for c in cands if name_of(c) == rec.get("chosen")), None)
        if chosen is not None:
            report = {"chosen": name_of(chosen), "path": chosen.path, "decided": "remembered", "node": described,
                      "rejected": rec.get("rejected") if isinstance(rec.get("rejected"), list) else []}
            return Choice(chosen, report)
    rejected: list[Judged] = []
    chosen_j: Judged | None = None
    for c in cands:
        j = judge(c, inputs_of, accel)
        if j.verdict == "does-not-fit":
            rejected.append(j)
            continue
        chosen_j = j
        break
    none_fits = chosen_j is None
    chosen = cands[0] if none_fits else chosen_j.lane
    certain = none_fits or chosen_j.verdict in ("fits", "tight")
    report: dict[str, Any] = {"chosen": name_of(chosen), "path": chosen.path, "decided": "judged" if certain else "not judged",
                              "node": described, "rejected": [j.to_dict() for j in rejected]}
    if none_fits:
        report["none_fits"] = True
    elif chosen_j.verdict not in ("fits", "tight"):
        report["why_not_judged"] = chosen_j.reason
    record = None
    if certain and key is not None and not none_fits:
        record = {"node": key, "definition": defn, "chosen": name_of(chosen), "rejected": report["rejected"]}
    return Choice(chosen, report, record)


def volume_inputs(ctx, lane: Lane) -> tuple[FitInputs | None, str | None]:
    """A candidate's fit inputs from its files on the volume, when they are all there."""
    from ..check import observe
    from .lane import folder_fit_inputs, gguf_fit_inputs

    plan = observe(ctx, lane)
    if plan.escaped or any(p.is_error for p in plan.result.problems):
        return None, "not (completely) on the volume"
    present = sorted(rel for rel, obs in plan.files.items() if obs.st is not None)
    if not present:
        return None, "not on the volume"
    if lane.kind == "gguf":
        return gguf_fit_inputs(plan.root / present[0], None), None
    return folder_fit_inputs(plan.root, present, None), None


def lock_inputs(ctx, lane: Lane) -> tuple[FitInputs | None, str | None]:
    from ..check import lock_drift
    from ..lockfile import lock_entry

    entry = lock_entry(ctx.lock, lane)
    if entry is None or lock_drift(entry, lane) or entry.fit is None:
        return None, "not in the lock with its fit inputs"
    inputs = FitInputs.from_dict(entry.fit, "lock")
    return (inputs, None) if inputs is not None else (None, "the lock's fit inputs are malformed")


def offline_inputs(ctx) -> Inputs:
    """The volume first (what is there is what is served), then the lock."""

    def inputs_of(lane: Lane) -> tuple[FitInputs | None, str | None]:
        got, why = volume_inputs(ctx, lane)
        if got is not None:
            return got, None
        got, why_lock = lock_inputs(ctx, lane)
        return (got, None) if got is not None else (None, f"{why}, and {why_lock}")

    return inputs_of


def apply(ctx, lanes: list[Lane], inputs_of: Inputs | None = None) -> list[Lane]:
    """The selected lanes with each lane that has variants replaced by the one this node serves;
    ctx.variants gets each choice for the report."""
    from .lane import node_of

    if not any(lane.variants for lane in lanes):
        return lanes
    node = node_of(ctx)
    inputs_of = inputs_of or offline_inputs(ctx)
    out = []
    for lane in lanes:
        if not lane.variants:
            out.append(lane)
            continue
        choice = choose(lane, node, inputs_of, ctx.receipts)
        ctx.variants[lane.name] = choice.report
        if choice.record is not None:
            ctx.variant_records[lane.name] = choice.record  # saved with the receipts when the run ends
        out.append(choice.lane)
    return out
