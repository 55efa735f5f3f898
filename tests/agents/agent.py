"""A stand-in CLI agent for tests: real process, controlled by flags.

--started FIFO     write one line into FIFO once running (the test reads it: no sleeps)
--grandchild FILE  spawn a grandchild that sleeps forever and write its pid to FILE
--ignore-term      ignore SIGTERM (so only SIGKILL stops it)
--block            wait forever after starting
--write NAME=TEXT  write TEXT into NAME in the working directory
--exit N           exit with N (default 0)
--record FILE      append "<task_id> <attempt_id>" to FILE (to count real runs)
--ledger FILE      append "START <task> <attempt>" as it starts, "END <task> <attempt>"
                   once its work is done (an out-of-band record of real executions)
--work-max S       work a random time in [0, S), drawn from the attempt id (replayable)
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--started")
    parser.add_argument("--grandchild")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--block", action="store_true")
    parser.add_argument("--work", type=float, default=0.0)
    parser.add_argument("--write", action="append", default=[])
    parser.add_argument("--exit", type=int, default=0)
    parser.add_argument("--record")
    parser.add_argument("--ledger")
    parser.add_argument("--work-max", type=float, default=0.0)
    args = parser.parse_args()
    ids = f"{os.environ.get('TC_TASK_ID')} {os.environ.get('TC_ATTEMPT_ID')}"
    if args.ledger:
        ledger(args.ledger, f"START {ids}")
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.grandchild:
        child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(60)"])
        with open(args.grandchild, "w") as f:
            f.write(str(child.pid))
    for item in args.write:
        name, _, text = item.partition("=")
        with open(name, "w") as f:
            f.write(text)
    if args.record:
        with open(args.record, "a") as f:
            f.write(f"{os.environ.get('TC_TASK_ID')} {os.environ.get('TC_ATTEMPT_ID')}\n")
    print(f"agent running in {os.getcwd()}", flush=True)
    if args.started:
        with open(args.started, "w") as f:
            f.write("started\n")
    if args.work_max:
        args.work = random.Random(ids).uniform(0.0, args.work_max)
    if args.work:
        time.sleep(args.work)  # stands for real work inside the agent, not test synchronisation
    while args.block:
        time.sleep(60)
    if args.ledger:
        ledger(args.ledger, f"END {ids}")
    return args.exit


def ledger(path: str, line: str) -> None:
    """One append of a whole line: concurrent agents' lines never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
