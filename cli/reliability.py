"""`ssd-img2img reconcile`: one reconciler pass by hand (the CPU worker runs it every
RECONCILE_INTERVAL_SECONDS anyway), e.g. right after restoring Redis."""

from __future__ import annotations

import json

import click


@click.command("reconcile")
@click.option(
    "--every-queued",
    is_flag=True,
    help="Wake the GPU workers for every QUEUED job now, not only those overdue (after a "
    "known loss of Redis's data; idle workers also poll PostgreSQL by themselves).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the job ids per outcome as JSON.")
def reconcile_command(every_queued: bool, as_json: bool) -> None:
    """Take back jobs of dead workers; wake the GPU workers for long-waiting QUEUED jobs."""
    from common.reconcile import BATCH, reconcile

    report = reconcile(limit=100_000 if every_queued else BATCH, every_queued=every_queued)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
        return
    click.echo(
        f"requeued {len(report.requeued)} (lease expired), failed {len(report.failed)} "
        f"(out of attempts), cancelled {len(report.cancelled)}, woke the workers again for "
        f"{len(report.redispatched)} queued"
    )
