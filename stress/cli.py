"""The ``taskq-stress`` command. For now it only mounts ``chaos`` (the fault injectors)."""

from __future__ import annotations

import click

from chaos.cli import cli as chaos_cli

__all__ = ["main"]


@click.group()
def main() -> None:
    """Stress taskq under injected faults."""


main.add_command(chaos_cli, name="chaos")


@main.group()
def bench() -> None:
    """Benchmarks: they print figures, they do not pass or fail."""


@bench.command()
@click.option("--broker", "brokers", multiple=True,
              default=["redis://127.0.0.1:6379/0", "amqp://guest:guest@127.0.0.1:5672//"],
              show_default=True)
@click.option("--tasks", type=click.IntRange(min=1), default=20_000, show_default=True)
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--compare", type=click.Choice(["celery"]), default=None,
              help="Alternate with a Celery worker on the same messages (5 rounds).")
def drain(brokers: tuple[str, ...], tasks: int, concurrency: int, rounds: int,
          compare: str | None) -> None:
    """Drain a pre-filled queue of noop tasks with a -c 2 worker; print tasks per second."""
    import json

    from stress.bench_drain import drain_once, report

    kinds = ["taskq", "celery"] if compare else ["taskq"]
    rounds = max(rounds, 5) if compare else rounds
    results = {}
    for url in brokers:
        runs = []
        for n in range(rounds):
            for kind in kinds:
                run = drain_once(kind, url, tasks, concurrency)
                click.echo(f"{url.split('://')[0]} round {n + 1} {kind}: "
                           f"{run.rate:,.0f} tasks/s ({run.seconds:.2f} s)", err=True)
                runs.append(run)
        results[url.split("://")[0]] = report(runs)
    click.echo(json.dumps(results, indent=2))
