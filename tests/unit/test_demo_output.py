"""``make demo``'s in-process run: its output captured to the log file while the terminal shows one line a task."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading

from mlops_airflow.demo import captured_output


def test_the_capture_ends_with_this_process_output_though_a_child_still_holds_the_pipe() -> None:
    """The smoke test's forkserver, started during the run, inherits descriptors 1 and 2 and lives as long as the
    demo: the capture waited for the pipe's end of file, 30 s, after every first run. It now ends with the demo's
    own output, every line of which is in the log; the child's later output never lands in it."""
    log = io.StringIO()
    seen: list[str] = []
    with captured_output(log, seen.append):
        print("from Python", flush=True)
        os.write(2, b"from the descriptor\n")
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; print('child here', flush=True); sys.stdin.readline(); print('later')"],
            stdin=subprocess.PIPE,
        )
        child_said = False
        while not child_said:  # the child writes into the pipe too, while the block runs
            child_said = "child here" in seen
    assert child.poll() is None  # the child lives on, holding the pipe's write end
    child.communicate(b"go on\n")  # it writes once more, then ends: the pipe's end of file only now
    assert log.getvalue().splitlines() == ["from Python", "from the descriptor", "child here"]
    assert not [t for t in threading.enumerate() if t.name == "demo-output"]  # the reader had finished
