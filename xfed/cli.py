"""Command line: XFL's role flags (-s, -t NODE, -a, -c VERB) plus `convert` and `keygen`.

Each role lives in its own package; this module only parses arguments, dispatches lazily
(so `-c validate` never imports torch), and turns XfedError into one line + exit code 2.
"""
from __future__ import annotations

import os
import sys

import click

from xfed.errors import XfedError

CLIENT_VERBS = ("start", "stop", "status", "list", "nodes", "validate", "serve")
TOOLS = ("convert", "keygen", "report", "import-primihub")


def _default_config_path() -> str:
    return os.environ.get("XFED_CONFIG_PATH") or "./config"


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=(
        "Roles: -s scheduler, -t NODE_ID trainer (label_trainer), -a assist trainer, "
        "-c VERB client with VERB in start|stop|status|list|nodes|validate|serve "
        "(serve: a read-only status page on 127.0.0.1, --port/--host). "
        "Tools: `xfed convert SRC DST` writes a native copy of a THUDM ChatGLM folder; "
        "`xfed keygen NODE` makes an Ed25519 identity key pair for a node; "
        "`xfed report JOB_DIR [--plot PNG]` prints (and draws) a job's per-round metrics; "
        "`xfed import-primihub ChatGlm.json OUT_DIR` writes an xfed config folder for a PrimiHub ChatGLM job."
    ),
)
@click.option("-s", "--scheduler", is_flag=True, help="Run the scheduler daemon.")
@click.option("-t", "--trainer", "trainer", metavar="NODE_ID", help="Run the trainer (label_trainer) daemon NODE_ID.")
@click.option("-a", "--assist_trainer", is_flag=True, help="Run the assist trainer (aggregator) daemon.")
@click.option("-c", "--client", "client", type=click.Choice(CLIENT_VERBS), metavar="VERB",
              help="Client verb: start | stop [JOB] | status [JOB] | list | nodes | validate | serve (JOB: or --job_id JOB).")
@click.option("--config_path", "--config-path", "config_path", default=_default_config_path,
              show_default="$XFED_CONFIG_PATH or ./config", help="Folder with fed_conf.json and trainer_config_*.json.")
@click.option("--bar", is_flag=True, help="Show a progress bar (client start --follow / status).")
@click.option("--follow", is_flag=True, help="start: stream progress until the job ends; exit 0 on success, 1 otherwise.")
@click.option("--wait-nodes", "wait_nodes", type=float, default=0.0, metavar="SECONDS",
              help="start: wait up to SECONDS for every participant to be alive.")
@click.option("--resume", "resume", metavar="JOB", default=None, help="start: resume a FAILED/STOPPED job from its last round.")
@click.option("--job_id", "--job-id", "job_id", metavar="JOB", default=None,
              help="stop / status: the job (same as the JOB argument); needed by stop when several jobs run.")
@click.option("--schema", is_flag=True, help="validate: print the JSON schema of the config files.")
@click.option("--strict", is_flag=True, help="validate: paths that do not exist here are errors, not warnings.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output where supported.")
@click.option("--wide", is_flag=True, help="status: every column of the round table (default: the main ones, 100 columns).")
@click.option("--out", "out_dir", default=None, help="keygen: folder for the key files.")
@click.option("--port", "port", type=int, default=8765, show_default=True, help="serve: the page's TCP port.")
@click.option("--host", "host", default="127.0.0.1", show_default=True,
              help="serve: address to bind (the page shows hosts and pids: keep it local unless you mean it).")
@click.option("--plot", "plot", default=None, metavar="PNG", help="report: also draw the curves into PNG.")
@click.argument("args", nargs=-1)
def main(scheduler, trainer, assist_trainer, client, config_path, bar, follow, wait_nodes, resume, job_id, schema,
         strict, as_json, wide, out_dir, port, host, plot, args):
    """xfed: federated LoRA / P-tuning v2 fine-tuning of ChatGLM-family models over Redis."""
    # `-t ''` is a role with a bad id, not no role at all (which would print the help)
    roles = [r for r in (scheduler, trainer, assist_trainer, client) if r not in (None, False)]
    try:
        if trainer is not None:
            from xfed.config.fed_conf import NODE_ID_RE, NODE_ID_RULE

            if not NODE_ID_RE.match(trainer):
                raise XfedError(f"-t: bad node id {trainer!r}: {NODE_ID_RULE}")
        if resume is not None and (resume.startswith("-") or not resume.strip()):
            # `--resume --follow` would otherwise take --follow as the job id
            raise XfedError(f"--resume needs a JOB id (got {resume!r}); e.g. -c start --resume 3 --follow")
        if job_id is not None and client not in ("stop", "status"):
            raise XfedError("--job_id goes with -c stop or -c status")
        if len(roles) > 1:
            raise XfedError("choose one role: -s, -t NODE_ID, -a or -c VERB")
        if not roles:
            if args and args[0] in TOOLS:
                return _tool(args[0], list(args[1:]), config_path=config_path, out_dir=out_dir, plot=plot)
            click.echo(click.get_current_context().get_help())
            sys.exit(2)
        if scheduler:
            from xfed.scheduler.main import run_scheduler
            return run_scheduler(config_path)
        if trainer:
            from xfed.node.main import run_node
            return run_node(config_path, node_id=trainer, assist=False)
        if assist_trainer:
            from xfed.node.main import run_node
            return run_node(config_path, node_id=None, assist=True)
        if client == "validate":
            from xfed.config.validate import validate_command
            from xfed.operators.registry import register_operator_settings

            register_operator_settings()
            sys.exit(validate_command(config_path, schema=schema, strict=strict))
        if client == "serve":
            if args:
                raise XfedError(f"serve takes no arguments (got {' '.join(args)})")
            from xfed.web.server import serve_command
            sys.exit(serve_command(config_path, host=host, port=port))
        from xfed.client import run_client
        sys.exit(run_client(client, config_path, _job_args(client, job_id, list(args)), bar=bar, follow=follow,
                            wait_nodes=wait_nodes, resume=resume, as_json=as_json, wide=wide) or 0)
    except XfedError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


def _job_args(verb: str, job_id: str | None, args: list[str]) -> list[str]:
    """`--job_id N` is the JOB argument of stop/status spelled as an option."""
    if job_id is None:
        return args
    if not job_id.strip() or job_id.startswith("-"):
        raise XfedError(f"--job_id needs a JOB id (got {job_id!r}); e.g. -c stop --job_id 3")
    if args and args != [job_id]:
        raise XfedError(f"{verb}: job {' '.join(args)} and --job_id {job_id} disagree; give one")
    return [job_id]


def _tool(name: str, args: list[str], *, config_path: str, out_dir: str | None, plot: str | None = None):
    if name == "convert":
        if len(args) != 2:
            raise XfedError("usage: xfed convert SRC DST")
        from xfed.models.convert import convert_command
        return convert_command(args[0], args[1])
    if name == "keygen":
        if len(args) != 1:
            raise XfedError("usage: xfed keygen NODE [--out DIR]")
        from xfed.security.keygen import keygen_command
        return keygen_command(args[0], out_dir=out_dir or config_path)
    if name == "report":
        if len(args) != 1:
            raise XfedError("usage: xfed report JOB_DIR [--plot PNG]")
        from pathlib import Path

        from xfed.operators.horizontal_chatglm.report import report
        sys.exit(report(Path(args[0]), plot))
    if name == "import-primihub":
        if len(args) != 2:
            raise XfedError("usage: xfed import-primihub ChatGlm.json OUT_DIR")
        from xfed.importers.primihub import import_command
        return import_command(args[0], args[1])
    raise XfedError(f"unknown tool {name!r}")


if __name__ == "__main__":
    main()
