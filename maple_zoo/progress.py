"""Progress for long work: a live rich bar per task on a terminal, one summary line per finished task.

The engine talks to a `Reporter`; quiet reporters (non-zero ranks, tests) print nothing.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Task:
    def __init__(self, reporter: Reporter, description: str, total: int | None):
        self.reporter, self.description = reporter, description
        self.progress = None
        if not reporter.quiet and reporter.console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=reporter.console, transient=True,
            )
            self.progress.start()
            self.task_id = self.progress.add_task(description, total=total, info="")

    def update_to(self, completed: int, total: int | None = None, **fields) -> None:
        if self.progress is not None:
            info = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
            self.progress.update(self.task_id, completed=completed, info=info,
                                 **({"total": total} if total is not None else {}))
            if total is not None and completed >= total and not fields:
                self.done()

    def done(self, summary: str = "") -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if summary:
            self.reporter.line(f"{self.description}: {summary}")


class Reporter:
    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(stderr=True)

    def line(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, highlight=False, markup=False)

    def task(self, description: str, total: int | None = None) -> Task:
        return Task(self, description, total)
