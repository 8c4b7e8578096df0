"""What a person watches: a live rich table of trials while a stage runs, and a final summary table.

Ray's own console output is switched off (verbose=0); `LiveCallback` feeds this table from Tune's
callback hooks in the Tuner's process. On a terminal the table redraws in place; piped to a file it
prints one line per trial event instead. The summary goes to stdout, the live view to stderr.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ray.tune import Callback
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from .runner import SweepSummary

_DISPLAYS: dict[str, SweepDisplay] = {}  # key -> display of this process (callbacks are pickled)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3g}" if abs(v) < 0.01 else f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return "-" if v is None else str(v)


@dataclass
class Row:
    index: int
    trial_id: str
    params: dict
    status: str = "RUNNING"
    epoch: int = 0
    value: float | None = None


@dataclass
class Stage:
    title: str
    params: list[str]
    objective: str
    total: int
    ranked: bool = True  # a search ranks its trials; the final seed runs are not a contest
    rows: dict[str, Row] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def best(self) -> Row | None:
        if not self.ranked:
            return None
        scored = [r for r in self.rows.values() if r.value is not None and r.status != "ERROR"]
        return max(scored, key=lambda r: r.value) if scored else None


class SweepDisplay:
    def __init__(self, console: Console | None = None, out: Console | None = None, live: bool | None = None):
        self.console = console or Console(stderr=True)
        self.out = out or Console(width=None if Console().is_terminal else 120)  # piped: no 80-column wrap
        self.live_enabled = self.console.is_terminal if live is None else live
        self.stage: Stage | None = None
        self._live: Live | None = None

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False)

    # ------------------------------------------------------------------ stage lifecycle
    def begin(self, title: str, params: list[str], objective: str, total: int, ranked: bool = True) -> None:
        self.end()
        self.stage = Stage(title, params, objective, total, ranked)
        if self.live_enabled:
            self._live = Live(get_renderable=self.render, console=self.console, refresh_per_second=2, transient=False)
            self._live.start()
        else:
            self.message(f"{title}: {total} trial{'s' if total != 1 else ''}, objective {objective}")

    def end(self) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

    # ------------------------------------------------------------------ trial events
    def trial_start(self, trial_id: str, index: int, params: dict) -> None:
        if self.stage is None:
            return
        row = self.stage.rows.setdefault(trial_id, Row(index, trial_id, dict(params)))
        row.status = "RUNNING"
        if not self.live_enabled:
            self.message(f"  #{index} {trial_id} started: " + " ".join(f"{k}={fmt(v)}" for k, v in params.items()))

    def trial_result(self, trial_id: str, result: dict) -> None:
        row = self.stage.rows.get(trial_id) if self.stage else None
        if row is None:
            return
        row.epoch = int(result.get("epoch") or row.epoch)
        value = result.get(self.stage.objective)
        if isinstance(value, (int, float)):
            row.value = float(value)
        if not self.live_enabled and not result.get("replayed") and not result.get("final"):
            shown = f"{self.stage.objective} {fmt(value)}" if isinstance(value, (int, float)) else \
                f"train_loss {fmt(result.get('train_loss'))}"
            self.message(f"  #{row.index} epoch {row.epoch}: {shown}")

    def trial_end(self, trial_id: str, status: str, stopped_early: bool = False) -> None:
        row = self.stage.rows.get(trial_id) if self.stage else None
        if row is None:
            return
        row.status = "STOPPED" if stopped_early and status == "DONE" else status
        if not self.live_enabled:
            best = self.stage.best()
            star = " (best so far)" if best is row else ""
            self.message(f"  #{row.index} {row.status.lower()} after epoch {row.epoch}: "
                         f"{self.stage.objective} {fmt(row.value)}{star}")

    def restore(self, rows: list[Row]) -> None:
        """Trials finished before a resume: shown, not re-run."""
        if self.stage is None:
            return
        for row in rows:
            self.stage.rows[row.trial_id] = row
        if not self.live_enabled and rows:
            self.message(f"  {len(rows)} trial(s) already finished before the resume")

    # ------------------------------------------------------------------ rendering
    def render(self):
        st = self.stage
        if st is None:
            return Text("")
        best = st.best()
        done = sum(r.status in ("DONE", "STOPPED", "ERROR") for r in st.rows.values())
        elapsed = time.monotonic() - st.started
        head = f"{st.title} · {done}/{st.total} done · {elapsed:.0f}s"
        if best is not None:
            head += f" · best {st.objective} {fmt(best.value)} (#{best.index})"
        table = Table(expand=False)
        for col in ["#", "trial", "status", *st.params, "epoch", st.objective]:
            table.add_column(col, justify="right" if col not in ("trial", "status") else "left")
        for row in sorted(st.rows.values(), key=lambda r: r.index):
            style = "bold green" if row is best else ("dim" if row.status in ("STOPPED", "ERROR") else "")
            table.add_row(str(row.index), row.trial_id, row.status.lower(),
                          *(fmt(row.params.get(p)) for p in st.params), str(row.epoch), fmt(row.value), style=style)
        return Group(Text(head, style="bold"), table)  # a title would wrap at the table's width

    def summary(self, summary: SweepSummary) -> None:
        self.end()
        self.out.print(render_summary(summary))


def render_summary(s: SweepSummary):
    parts = []
    for r in s.datasets:
        t = Table(title=f"sweep {s.name} · {r.dataset} ({r.protocol})", title_justify="left")
        t.add_column("")
        for col in r.columns:
            t.add_column(col, justify="right")
        for seed, metrics in zip(r.seeds, r.per_seed):
            t.add_row(f"seed {seed}", *(fmt(metrics.get(c)) for c in r.columns))
        if len(r.per_seed) > 1:
            t.add_row("mean ± std", *(f"{fmt(r.mean.get(c))} ± {fmt(r.std.get(c))}" for c in r.columns), style="bold")
        parts.append(t)
        params = ", ".join(f"{k}={fmt(v)}" for k, v in r.best_params.items())
        parts.append(Text(f"best configuration: {params}  (trial {r.best_trial}, {r.objective} "
                          f"{fmt(r.best_value)} on training-side validation data)"))
        if r.promotion:
            parts.append(Text(f"promoted to the zoo as {r.promotion}"))
    parts.append(Text(f"MLflow: {s.tracking_uri} · experiment {s.experiment_id} · parent run {s.parent_run_id}"))
    parts.append(Text(f"browse: {s.ui_command}  (then open {s.ui_path})"))
    parts.append(Text(f"took {s.elapsed_s:.0f}s · state in {s.workdir}"))
    return Group(*parts)


class LiveCallback(Callback):
    """Tune callback feeding the display registered under `key` in this process (picklable)."""

    def __init__(self, key: str, epochs: int):
        self.key, self.epochs = key, epochs

    @property
    def display(self) -> SweepDisplay | None:
        return _DISPLAYS.get(self.key)

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.display:
            self.display.trial_start(trial.trial_id, trials.index(trial) + 1, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.display:
            self.display.trial_result(trial.trial_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.display:
            epoch = int((trial.last_result or {}).get("epoch") or 0)
            self.display.trial_end(trial.trial_id, "DONE", epoch < int(trial.config.get("epochs", self.epochs)))

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.display:
            self.display.trial_end(trial.trial_id, "ERROR")


def register(key: str, display: SweepDisplay) -> None:
    _DISPLAYS[key] = display


def unregister(key: str) -> None:
    _DISPLAYS.pop(key, None)
