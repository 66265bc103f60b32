"""Child process that runs one stage of one job on one node: `python -m xfed.node.stage_runner ...`.

The node daemon starts it in its own process group; it builds the StageContext (real Comm), calls
the operator, and reports `done` or `error` itself. Exit codes tell the daemon what was reported:
0 done, 3 error reported, 4 stopped on request; anything else (a signal, OOM, an exit before any
report) is for the daemon to report. The child dies with its daemon (PDEATHSIG + a parent watch),
so a SIGKILLed daemon never leaves a stage running.

`--spare` starts a warm child: it imports the broker, config and the operators named by
`--preload` while the node is idle, then waits for one JSON line on stdin carrying the stage
arguments. The daemon keeps one spare ready, so a job does not wait for Python and library
imports (seconds for numpy/redis, more for torch/transformers) on every node at stage start.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from xfed.node.exit_codes import EXIT_DONE, EXIT_ERROR_REPORTED, EXIT_ORPHANED, EXIT_STOPPED

log = logging.getLogger("xfed.stage")


def _die_with_parent(parent_pid: int) -> None:
    """Linux PDEATHSIG, plus a watch thread for the race where the parent died before prctl ran."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(EXIT_ORPHANED)
            time.sleep(0.2)

    if os.getppid() != parent_pid:
        os._exit(EXIT_ORPHANED)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


STAGE_FIELDS = {"config_path": str, "node": str, "job": str, "stage": int, "attempt": int, "work_dir": str}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m xfed.node.stage_runner")
    p.add_argument("--spare", action="store_true", help="preload, then read the stage arguments from stdin")
    p.add_argument("--preload", default="", help="comma-separated operator names to import ahead (with --spare)")
    p.add_argument("--config-path", dest="config_path")
    p.add_argument("--node")
    p.add_argument("--job")
    p.add_argument("--stage", type=int)
    p.add_argument("--attempt", type=int, default=0)
    p.add_argument("--parent-pid", type=int, default=0)
    p.add_argument("--work-dir", dest="work_dir")
    p.add_argument("--incarnation", type=int, default=0, help="> 0: this node rejoins a running stage")
    args = p.parse_args(argv)
    if not args.spare:
        missing = [f"--{k.replace('_', '-')}" for k in STAGE_FIELDS if getattr(args, k) is None]
        if missing:
            p.error(f"missing {' '.join(missing)}")
    return args


def preload(names: str) -> None:
    """Import what every stage needs, plus the named operators (failures are the stage's business)."""
    import xfed.broker.channels  # noqa: F401
    import xfed.broker.connection  # noqa: F401
    import xfed.config  # noqa: F401
    from xfed.operators.registry import operator_module

    for name in filter(None, (n.strip() for n in names.split(","))):
        try:
            operator_module(name)
        except Exception as err:  # noqa: BLE001 - reported properly when the stage imports it again
            print(f"preload of operator {name!r} failed: {err}", file=sys.stderr)


def read_stage_args(args: argparse.Namespace, line: str) -> argparse.Namespace:
    """Fill `args` from the daemon's JSON line (a spare's only input); ValueError if malformed."""
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("stage arguments must be a JSON object")
    for name, typ in STAGE_FIELDS.items():
        value = data.get(name)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise ValueError(f"stage argument {name!r} missing or not {typ.__name__}")
        setattr(args, name, value)
    incarnation = data.get("incarnation", 0)  # > 0 only for a node restarted into a running stage
    if not isinstance(incarnation, int) or isinstance(incarnation, bool) or incarnation < 0:
        raise ValueError("stage argument 'incarnation' not a non-negative int")
    args.incarnation = incarnation
    return args


def redirect_output(log_path: Path) -> None:
    """Point fds 1 and 2 at the stage's log (a spare was started before the log's folder existed)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run(args: argparse.Namespace) -> int:
    from xfed.broker.connection import connect
    from xfed.broker.jobstore import JobStore
    from xfed.broker.keys import Keys
    from xfed.config import load_fed_conf, load_stages
    from xfed.errors import XfedError
    from xfed.node.context import StageContext, StopWatcher
    from xfed.node.events import EventReporter
    from xfed.node.pulse import Pulse

    fed = load_fed_conf(args.config_path)
    # before any event: without a valid key this process cannot sign one, so a key problem ends it
    # with exit code 1 and the daemon (holding the key it checked at start) reports the log line
    identity_key = _identity_key(fed, args)
    keys = Keys(fed.redis.namespace)
    r = connect(fed)
    reporter = EventReporter(r, keys, args.job, args.node, args.stage, args.attempt, identity_key=identity_key,
                             incarnation=args.incarnation,
                             background=True)  # progress/metrics never hold up a round
    pulse = Pulse(args.work_dir)  # the daemon fails a stage whose main thread stops moving
    watcher = StopWatcher(JobStore(r, keys), args.job, args.stage, args.attempt, on_poll=pulse.beat)

    def report(kind: str, data: dict) -> None:
        if kind == "progress" and isinstance(data, dict):
            pulse.beat(data)
        reporter.report(kind, data)

    in_operator = [True]

    def on_term(signum, frame):  # SIGTERM: stop cooperatively; the daemon SIGKILLs after a grace
        watcher.stop("stop requested")
        if in_operator[0]:  # interrupt the operator once; never the reporting after it
            in_operator[0] = False
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        stages = load_stages(args.config_path, args.node)
        if not 0 <= args.stage < len(stages):
            raise XfedError(f"trainer_config_{args.node}.json has {len(stages)} stage(s); "
                            f"the job asked for stage {args.stage}")
        # every path of the stage, inputs too, with [JOB_ID] [NODE_ID] [STAGE_ID] filled in
        stage = stages[args.stage].filled(job_id=args.job, node_id=args.node, stage_id=args.stage)
        reporter.status("running", pid=os.getpid())
        pulse.beat()
        ctx = StageContext(
            job_id=args.job, stage_id=args.stage, attempt=args.attempt, node_id=args.node,
            identity=stage.identity, stage=stage, fed=fed, trainer_ids=list(fed.trainer_ids),
            assist_id=fed.assist_trainer_id, comm=_make_comm(r, keys, args, watcher, fed, identity_key),
            work_dir=Path(args.work_dir), identity_key=identity_key, job_uid=JobStore(r, keys).uid(args.job),
            incarnation=args.incarnation, _report=report, _should_stop=watcher,
            _membership=lambda: JobStore(r, keys).rejoins(args.job, args.stage, args.attempt),
        )
        _warn_unpinned(fed, args.node, reporter)
        from xfed.operators.registry import operator_module

        result = operator_module(stage.model_info.name).run(ctx)
        in_operator[0] = False
        reporter.done(len(stages), result if isinstance(result, dict) else {"result": result})
        return EXIT_DONE
    except BaseException as err:  # noqa: B036 - every way out must be reported (or deliberately not)
        in_operator[0] = False
        # an error caused by the job ending elsewhere (a peer failed, a stop) is not this node's failure
        if isinstance(err, KeyboardInterrupt) or watcher(fresh=True):
            log.info("stage stopped: %s", watcher.reason or type(err).__name__)
            _try(reporter.status, "stopped", reason=watcher.reason or "interrupted")
            return EXIT_STOPPED
        if isinstance(err, XfedError):
            message = str(err)
        else:
            traceback.print_exc()
            message = f"{type(err).__name__}: {err} (traceback in {args.work_dir}/stage.log)"
        log.error("stage failed: %s", message)
        # the party whose check failed (an upload, a set-up) when that is not this node
        blame = getattr(err, "blame", None)
        extra = {"blame": blame} if isinstance(blame, str) and blame and blame != args.node else {}
        return EXIT_ERROR_REPORTED if _try(reporter.error, message, **extra) else 1


def _identity_key(fed, args):
    from xfed.node.identity import load_identity_key

    return load_identity_key(fed, args.config_path, args.node)


def _make_comm(r, keys, args, watcher, fed=None, identity_key=None):
    """The stage's Comm; with pinned identities it signs what it sends and verifies pinned senders."""
    from xfed.broker.channels import Comm

    auth = None
    if fed.identities:
        from xfed.security.messages import MessageAuth

        auth = MessageAuth(fed.identities, identity_key)
    # the watcher wakes on the job's state changes itself: the Comm's own job-state read is only a
    # fallback, and its blocking reads may last a second (a stop is still seen within that second)
    return Comm(r, keys, args.job, args.stage, args.node, attempt=args.attempt, should_stop=watcher, auth=auth,
                incarnation=args.incarnation, poll_s=1.0, job_check_s=30.0)


def unpinned_warning(fed) -> str | None:
    """One line when identities are pinned for some participants but not all (None otherwise)."""
    pins = fed.identities
    if not pins:
        return None
    missing = [n for n in fed.node_ids if n not in pins]
    if not missing:
        return None
    what = [f"{n} (the aggregator: the initial adapter and every round's mean)" if n == fed.assist_trainer_id
            else n for n in missing]
    return (f"identities: fed_conf.json pins no key for {', '.join(what)}; their messages are not "
            "authenticated, so a broker could change them. Pin them with `xfed.py keygen NODE`.")


def _warn_unpinned(fed, node: str, reporter) -> None:
    """Logged by every node at stage start; reported once per job, by the first unpinned node."""
    message = unpinned_warning(fed)
    if message is None:
        return
    log.warning("%s", message)
    if node == next(n for n in fed.node_ids if n not in fed.identities):
        reporter.report("warning", {"message": message, "node": node})


def _try(fn, *a, **kw) -> bool:
    try:
        fn(*a, **kw)
        return True
    except Exception as err:  # Redis gone: the daemon reports the exit code instead
        log.error("could not report to Redis: %s", err)
        return False


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.parent_pid:
        _die_with_parent(args.parent_pid)
    if args.spare:
        preload(args.preload)
        line = sys.stdin.readline()
        if not line:  # the daemon closed the pipe: not needed any more
            os._exit(0)
        try:
            read_stage_args(args, line)
        except ValueError as err:
            print(f"error: spare child got bad stage arguments: {err}", file=sys.stderr)
            os._exit(2)
        redirect_output(Path(args.work_dir) / "stage.log")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {args.node} job {args.job} stage {args.stage} %(levelname)s %(message)s")
    try:
        code = run(args)
    except Exception as err:  # config/connection failure before a reporter existed
        traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # operator threads (tokenizers, data loaders) must not keep the child alive


if __name__ == "__main__":
    main()
