"""Warnings during a progress bar are written above it, not into its line."""

import subprocess
import sys

SCRIPT = r"""
import io, logging, sys
from tqdm import tqdm
from rubiks_eval.progress import notices_above
bar = tqdm(total=3, desc="eval", file=sys.stderr, ascii=True)
bar.update(1)
with notices_above(bar):
    logging.getLogger("rubiks_shift").warning("rubiks-shift: compiling something")
    logging.getLogger("rubiks_shift").info("not shown")
bar.update(2)
bar.close()
logging.getLogger("rubiks_shift").warning("after the bar")
print("handlers left:", len(logging.getLogger("rubiks_shift").handlers))
"""


def test_notice_is_written_on_its_own_line_above_the_bar():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line.split("\r")[-1] for line in proc.stderr.splitlines()]
    assert "rubiks-shift: compiling something" in lines  # a line of its own
    assert "not shown" not in proc.stderr
    assert "after the bar" in lines  # the last-resort handler again once the bar is gone
    assert proc.stdout.strip() == "handlers left: 0"


def test_configured_logging_is_left_alone():
    script = "import logging; logging.basicConfig()\n" + SCRIPT
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "WARNING:rubiks_shift:rubiks-shift: compiling something" in proc.stderr
