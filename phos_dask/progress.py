"""Job progress for people (one bar on a terminal) and for machines (a JSON line per image)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


class Progress:
    """Counts images and megapixels; draws one archive-level bar, or prints JSON lines without a tty."""

    def __init__(self, total_images: int, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.total = total_images
        self.done = self.failed = self.skipped = 0
        self.megapixels = 0.0
        self.t0 = time.monotonic()

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.skipped

    def update(self, result: dict[str, Any]) -> None:
        status = result.get("status")
        if status == "done":
            self.done += 1
            self.megapixels += float(result.get("megapixels", 0.0))
        elif status == "skipped":
            self.skipped += 1
        else:
            self.failed += 1
        if self.tty:
            self._draw()
        else:
            print(json.dumps({"event": "image", **result}), file=self.stream, flush=True)

    def _draw(self) -> None:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = self.megapixels / elapsed
        worked = self.done + self.failed
        remaining = self.total - self.finished
        eta = remaining * elapsed / worked if worked else float("nan")
        width = 30
        filled = int(width * self.finished / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        eta_text = "--" if eta != eta else f"{eta:,.0f}s"
        line = (f"\r[{bar}] {self.finished}/{self.total} images  {self.megapixels:,.1f} MP  "
                f"{rate:,.1f} MP/s  ETA {eta_text}  failed {self.failed}")
        print(line, end="", file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.stream, flush=True)
