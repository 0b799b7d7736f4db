"""`ssd-img2img reconcile`: one reconciler pass by hand (the CPU worker runs it every
RECONCILE_INTERVAL_SECONDS anyway), e.g. right after restoring Redis."""

from __future__ import annotations

import json

import click


@click.command("reconcile")
@click.option(
    "--every-queued",
    is_flag=True,
    help="Re-send every QUEUED job now, not only those overdue (after a known loss of "
    "Redis's data; duplicates are dropped by the workers' claim).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the job ids per outcome as JSON.")
def reconcile_command(every_queued: bool, as_json: bool) -> None:
    """Re-send QUEUED jobs whose message may be lost; take back jobs of dead workers."""
    from common.reconcile import BATCH, reconcile

    report = reconcile(limit=100_000 if every_queued else BATCH, every_queued=every_queued)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
        return
    click.echo(
        f"requeued {len(report.requeued)} (lease expired), failed {len(report.failed)} "
        f"(out of attempts), cancelled {len(report.cancelled)}, re-sent "
        f"{len(report.redispatched)} queued; {report.send_errors} could not be sent"
    )
