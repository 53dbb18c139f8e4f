"""Job logs: a failed job's traceback lands in its rule log; progress bars in a log are lines."""
from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

from conftest import REPO


def test_an_uncaught_exception_is_written_to_the_rule_log(tmp_path):
    log = tmp_path / "logs" / "job.log"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / 'src')!r})
        from cellmamba.runlog import setup_logging
        setup_logging({str(tmp_path / "first.log")!r})  # a second set-up: the error goes to the newer log
        setup_logging({str(log)!r})
        def inner():
            raise ValueError("bad shard 3")
        inner()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    text = log.read_text()
    assert "CRITICAL cellmamba: the job failed: ValueError: bad shard 3" in text
    assert "Traceback (most recent call last)" in text and "in inner" in text
    assert "ValueError: bad shard 3" in proc.stderr  # Python's own report still reaches stderr
    assert "bad shard 3" not in (tmp_path / "first.log").read_text()


def test_progress_off_a_terminal_logs_whole_lines_at_an_interval(monkeypatch, caplog):
    from cellmamba import runlog

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    with caplog.at_level(logging.INFO, logger="cellmamba.progress"):
        for _ in runlog.progress(range(500), desc="train"):
            pass
    lines = [r.getMessage() for r in caplog.records if r.name == "cellmamba.progress"]
    # a fast loop within one interval: the opening line and the final one, never a carriage return
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("train: 100%") and "500/500" in lines[-1]
    assert not any("\r" in line for line in lines)
    caplog.clear()
    monkeypatch.setattr(runlog, "LOG_PROGRESS_INTERVAL", 0.0)
    with caplog.at_level(logging.INFO, logger="cellmamba.progress"):
        for _ in runlog.progress(range(5), desc="embed", mininterval=0.0, miniters=1):
            pass
    lines = [r.getMessage() for r in caplog.records if r.name == "cellmamba.progress"]
    assert [line.split("|")[0].strip() for line in lines][-1] == "embed: 100%" and len(lines) >= 5
