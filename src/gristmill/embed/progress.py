"""The embedding progress bar: documents, docs/s, tokens/s and ETA (rich)."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)


class EmbedProgress:
    """Context manager; `advance(docs, tokens)` after each batch. Silent when not enabled."""

    def __init__(self, total_docs: int, *, enabled: bool) -> None:
        self.enabled = enabled and total_docs > 0
        self.docs = self.tokens = 0
        self._started = time.perf_counter()
        self._progress = Progress(
            TextColumn("embed"), BarColumn(), MofNCompleteColumn(),
            TextColumn("docs  {task.fields[docs_s]} docs/s  {task.fields[tokens_s]} tokens/s"),
            TimeRemainingColumn(), console=Console(file=sys.stderr), transient=False,
        )
        self._task: TaskID | None = None
        self._total = total_docs

    def __enter__(self) -> EmbedProgress:
        if self.enabled:
            self._progress.start()
            self._task = self._progress.add_task("embed", total=self._total, docs_s="-",
                                                 tokens_s="-")
        return self

    def advance(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens
        if self._task is None:
            return
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        self._progress.update(self._task, advance=docs, docs_s=f"{self.docs / elapsed:,.1f}",
                              tokens_s=f"{self.tokens / elapsed:,.0f}")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.enabled:
            self._progress.stop()
