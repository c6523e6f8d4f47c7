"""Progress: one archive-level bar on a terminal, one JSON line per image otherwise."""

from __future__ import annotations

import io
import json

from phos_dask.progress import Progress


def test_terminal_gets_one_bar_with_images_megapixels_rate_and_eta():
    out = io.StringIO()
    p = Progress(4, stream=out, tty=True)
    p.update({"key": "a", "status": "done", "megapixels": 24.0})
    p.update({"key": "b", "status": "skipped"})
    p.close()
    last = out.getvalue().rstrip("\n").split("\r")[-1]
    assert "2/4 images" in last and "24.0 MP" in last and "MP/s" in last and "ETA" in last
    assert out.getvalue().count("\n") == 1  # redrawn in place, one line in the end


def test_without_a_terminal_each_image_is_one_json_line():
    out = io.StringIO()
    p = Progress(2, stream=out, tty=False)
    p.update({"key": "a", "status": "done", "megapixels": 1.5})
    p.update({"key": "b", "status": "failed", "error": "cannot decode image 'b.jpg'"})
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["key"] for r in lines] == ["a", "b"] and lines[1]["status"] == "failed"
    assert (p.done, p.failed, p.megapixels) == (1, 1, 1.5)
