"""The exception types xfed raises for user-facing problems: each carries a one-line message."""


class XfedError(Exception):
    """Base: the CLI prints `str(err)` on one line and exits 2 (no traceback)."""

    exit_code = 2
    blame: str | None = None  # the party that caused it, when another noticed (`blaming`)


class ConfigError(XfedError):
    """A config file is malformed, incomplete or inconsistent (message names file, stage, key)."""


class BrokerError(XfedError):
    """Redis unreachable, or a broker operation failed (message names the address / key)."""


class FrameError(XfedError):
    """A message read from Redis is malformed, truncated, oversized, forged or of the wrong type."""


class ChannelTimeout(BrokerError):
    """A peer did not answer in time (message names the nodes that did not answer)."""


class JobError(XfedError):
    """A job failed or was refused (message names the node and the reason)."""


class ModelError(XfedError):
    """A model folder, weight file, tokenizer or adapter could not be loaded (names file and key)."""


class PreflightError(JobError):
    """Parties disagree on base model, tokenizer, peft config or schedule."""

    table: str = ""  # the per-party diff table (multi-line), for the job log and the console


class SecurityError(XfedError):
    """A signature, key or identity check failed."""


def blaming(err: XfedError, node: str) -> XfedError:
    """Mark `err` as caused by party `node` (the stage's error event carries it as `blame`, and the
    scheduler records that node as the failed one, not the node that noticed)."""
    err.blame = node
    return err
