"""``make bench``: every benchmark, one process each, with wall time and peak RSS from /usr/bin/time -v."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["parse_time.py", "ct_task_timings.py", "closed_loop.py"]


def run(script: str) -> dict:
    cmd = [sys.executable, str(HERE / script)]
    if shutil.which("time") or Path("/usr/bin/time").exists():
        cmd = ["/usr/bin/time", "-v", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = re.search(r"Elapsed \(wall clock\) time.*: (.+)", proc.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return {
        "script": script,
        "exit_code": proc.returncode,
        "wall_clock": wall.group(1).strip() if wall else None,
        "max_rss_mb": round(int(rss.group(1)) / 1024, 1) if rss else None,
    }


def main() -> int:
    results = [run(s) for s in BENCHMARKS if (HERE / s).exists()]
    (HERE / "results" / "run_all.json").write_text(json.dumps(results, indent=2) + "\n")
    for r in results:
        print(f"{r['script']:24} exit {r['exit_code']}  wall {r['wall_clock']}  peak RSS {r['max_rss_mb']} MB")
    return max((r["exit_code"] for r in results), default=0)


if __name__ == "__main__":
    sys.exit(main())
