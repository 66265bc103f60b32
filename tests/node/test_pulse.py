"""The stage pulse and the daemon's stall check (pure file + clock logic)."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

from xfed.node.pulse import FACTOR, Pulse, StallWatch, process_stopped


def test_a_quiet_stage_is_a_stall_after_the_timeout_and_the_message_names_the_last_progress(tmp_path):
    pulse, watch = Pulse(tmp_path), StallWatch(tmp_path, timeout_s=10, now=0.0)
    assert watch.check(now=9.0) is None
    pulse.beat({"round": 3, "rounds": 20, "loss": 0.5})
    assert watch.check(now=9.5) is None  # the pulse moved: the clock restarts at 9.5
    assert watch.check(now=19.0) is None
    assert abs(watch.check(now=19.6) - 10.1) < 1e-9
    text = watch.describe(10.1, None)
    assert "made no progress for 10 s" in text and "last progress: round 3/20" in text and "killed" in text


def test_the_limit_grows_to_factor_times_the_slowest_gap_but_not_from_start_up(tmp_path):
    pulse, watch = Pulse(tmp_path), StallWatch(tmp_path, timeout_s=1, now=0.0)
    pulse.beat({"step": 1})
    watch.check(now=50.0)                  # start-up (imports, model load) is not a step
    assert watch.limit() == 1
    pulse.beat({"step": 2})
    os.utime(pulse.path, ns=(1, 1))        # a new mtime even on a coarse clock
    watch.check(now=54.0)                  # one slow step of 4 s
    assert watch.limit() == FACTOR * 4.0
    assert watch.check(now=54.0 + FACTOR * 4.0 - 0.1) is None
    assert watch.check(now=54.0 + FACTOR * 4.0 + 0.1) is not None


def test_only_the_main_thread_pulses_and_tight_loops_are_rate_limited(tmp_path):
    pulse = Pulse(tmp_path)
    t = threading.Thread(target=pulse.beat)
    t.start()
    t.join()
    assert not pulse.path.exists()         # a helper thread cannot hide a stuck main thread
    for _ in range(1000):
        pulse.beat()
    assert pulse.seq == 1


def test_a_sigstopped_process_is_recognised():
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert not process_stopped(proc.pid)
        os.kill(proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not process_stopped(proc.pid):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert "the process is stopped (SIGSTOP?)" in StallWatch("/nonexistent", 1).describe(2, proc.pid)
    finally:
        proc.kill()
        proc.wait()
