"""Runs one chaos experiment end to end and reports it.

Phases: start the cluster, set up items and stock, settle; traffic and faults;
heal and settle; snapshot and check (live); stop every process; check the
databases (offline); write the history; report. A violation is printed with
the seed, the command that reruns the experiment and the calls and faults
around the evidence; the full history is in `history.jsonl` in the work dir.
"""

from __future__ import annotations

import asyncio
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tests.chaos.harness import (
    FAULT_KINDS,
    UNSUPPORTED_FAULTS,
    ChaosConfig,
    ChaosRun,
    Cluster,
    Violation,
    set_up_sites,
)
from tests.chaos.history import History
from tests.chaos.invariants import (
    LIVE_CHECKS,
    Snapshot,
    check_hub_escrow,
    check_integrity,
    check_replays,
    settle,
    snapshot,
)

VIOLATIONS_PRINTED_MAX: Final = 20
CONTEXT_LINES_MAX: Final = 60
SETTLE_NOTE_SECONDS: Final = 20.0


@dataclass
class ChaosReport:
    config: ChaosConfig
    traffic_seconds: float = 0.0
    total_seconds: float = 0.0
    operations: Counter[tuple[str, str]] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    contexts: list[list[str]] = field(default_factory=list)
    history_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def operations_total(self) -> int:
        return sum(self.operations.values())

    @property
    def faults_total(self) -> int:
        return sum(self.faults.values())

    def replay_command(self) -> str:
        return self.config.rerun or (
            f"python -m tests.chaos.soak --seconds {self.config.traffic_seconds:.0f} "
            f"--seed {self.config.seed}"
        )

    def render(self) -> str:
        config = self.config
        lines = [
            f"stockd chaos: seed {config.seed}; {self.traffic_seconds:.1f} s of traffic and faults "
            f"({len(config.sites)} edges behind TCP proxies, hub, nats-server), "
            f"{self.total_seconds:.1f} s in all; work dir {config.work_dir}",
        ]
        by_kind: dict[str, Counter[str]] = {}
        for (kind, outcome), count in self.operations.items():
            by_kind.setdefault(kind, Counter())[outcome] += count
        outcomes = Counter[str]()
        for counts in by_kind.values():
            outcomes.update(counts)
        lines.append(
            f"operations: {self.operations_total} (ok {outcomes['ok']}, refused "
            f"{outcomes['refused']}, unknown {outcomes['unknown']})"
        )
        lines.append(f"  {'kind':<20}{'ok':>8}{'refused':>9}{'unknown':>9}")
        for kind in sorted(by_kind):
            counts = by_kind[kind]
            lines.append(
                f"  {kind:<20}{counts['ok']:>8}{counts['refused']:>9}{counts['unknown']:>9}"
            )
        lines.append(f"faults: {self.faults_total}")
        for kind in sorted(set(self.faults) | set(FAULT_KINDS)):
            lines.append(f"  {kind:<20}{self.faults[kind]:>5}")
        for kind, why in sorted(UNSUPPORTED_FAULTS.items()):
            lines.append(f"  {kind:<20}    - {why}")
        lines.append(f"invariants checked: {len(self.checks)}")
        failed = Counter(violation.invariant for violation in self.violations)
        for name in sorted(set(self.checks) | set(failed)):
            verdict = f"{failed[name]} VIOLATED" if failed[name] else "ok"
            lines.append(f"  {name:<45}{self.checks[name]:>8} checks  {verdict}")
        for note in self.notes:
            lines.append(f"note: {note}")
        if self.history_path is not None:
            lines.append(f"history: {self.history_path}")
        for number, violation in enumerate(self.violations):
            context = self.contexts[number] if number < len(self.contexts) else []
            if number >= VIOLATIONS_PRINTED_MAX:
                lines.append(f"... and {len(self.violations) - number} more violations")
                break
            lines.append(f"VIOLATION {violation.invariant}: {violation.detail}")
            lines.append(f"  seed {config.seed}; rerun: {self.replay_command()}")
            lines.extend(f"    {line}" for line in context[-CONTEXT_LINES_MAX:])
        lines.append(f"violations: {len(self.violations)}")
        return "\n".join(lines)


async def run_chaos(config: ChaosConfig) -> ChaosReport:
    """Runs the experiment; harness failures become a `harness_completed` violation."""
    loop = asyncio.get_running_loop()
    cluster = Cluster(config)
    run = ChaosRun(config, cluster, History())
    run.started_at = loop.time()
    snap: Snapshot | None = None
    phases: dict[str, float] = {}
    mark = loop.time()

    def phase(name: str) -> None:
        nonlocal mark
        phases[name] = loop.time() - mark
        mark = loop.time()

    try:
        try:
            await cluster.start()
            phase("start")
            await set_up_sites(run)
            problems = await settle(run)
            if problems:
                raise RuntimeError(f"cluster did not settle before traffic: {problems[:10]}")
            phase("set-up")
            await run.run_traffic()
            phase("traffic")
            run.settle_log.clear()
            problems = await settle(run)
            phase("settle")
            if problems or phases["settle"] > SETTLE_NOTE_SECONDS:
                run.notes.append("settling waited on: " + " | ".join(run.settle_log[-12:]))
            run.check(
                "converges_after_healing",
                not problems,
                lambda: f"not at rest {config.settle_timeout_seconds:.0f}s after healing: "
                + "; ".join(problems[:20]),
            )
            snap = await snapshot(run)
            snap.settled = not problems
            if problems:
                run.notes.append(
                    "the cluster never came to rest: hub-versus-edge comparisons were skipped"
                )
            for check in LIVE_CHECKS:
                check(run, snap)
            await check_replays(run, snap)
            phase("checks")
        finally:
            await cluster.stop()
            phase("stop")
        check_integrity(run, [cluster.hub.db_path, *(e.db_path for e in cluster.edges.values())])
        if snap is not None:
            check_hub_escrow(run, cluster.hub.db_path, snap)
    except Exception as error:
        run.violate("harness_completed", f"{error!r}\n{traceback.format_exc()}")
    run.notes.append(
        "phase seconds: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in phases.items())
    )
    report = ChaosReport(
        config=config,
        traffic_seconds=run.traffic_seconds,
        total_seconds=loop.time() - run.started_at,
        operations=run.history.operation_counts(),
        faults=run.history.fault_counts(),
        checks=run.checks,
        violations=run.violations,
        notes=run.notes,
    )
    records = {record.index: record for record in run.history.calls}
    for violation in run.violations[:VIOLATIONS_PRINTED_MAX]:
        involved = [records[index] for index in violation.records if index in records]
        report.contexts.append(run.history.around(involved))
    try:
        report.history_path = config.work_dir / "history.jsonl"
        run.history.write_jsonl(report.history_path)
    except OSError as error:
        report.notes.append(f"history not written: {error!r}")
    return report
