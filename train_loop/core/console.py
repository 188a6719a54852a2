"""The console every command shares: stdout flushed at each line, known library noise filtered,
progress bars only on a terminal, and one exit status for a user's mistake (``run_tool``).
"""

from __future__ import annotations

import datetime
import logging
import math
import sys
import warnings

from tqdm.auto import tqdm

from .errors import UserError, storage_error


def make_line_buffered() -> None:
    """Flush stdout at every newline, also when it is a pipe or a file."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)


class _KnownNoise(logging.Filter):
    """Drop library warnings that are harmless here and would repeat in every run's log."""

    MESSAGES = (
        # accelerate saves tied embeddings once; from_pretrained re-ties them on load.
        "Removed shared tensor",
        # Whisper's own generate() passes its suppress lists next to a generation config.
        "Passing `generation_config` together with generation-related arguments",
        # Decoder prompts are never padded in our batches (every clip has the same prompt).
        "The attention mask is not set with a batched input",
        # transcribe caps new tokens per window below the generation config's max_length.
        "Both `max_new_tokens`",
        # DeepSpeed announces the accelerator it picked each time it is imported.
        "Setting accelerator to CPU", "Setting ds_accelerator to",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in self.MESSAGES)


def quiet_library_output() -> None:
    """Filter known-harmless warnings; without a terminal, no library progress bars either
    (they would fill log files with carriage returns)."""
    from transformers.utils import logging as transformers_logging

    # torchdata's StatefulDataLoader calls a deprecated torch function on every iterator.
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
    # DeepSpeed calls torch.distributed functions that torch has renamed, on every step.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed.c10d_logger")
    noise = _KnownNoise()
    # Logger filters see only records logged on that very logger; handler filters see the
    # records that propagate to it. transformers has its own handler, accelerate does not.
    logging.getLogger("accelerate.utils.other").addFilter(noise)
    # DeepSpeed's logger logs straight to its own stdout handler; a filter on the logger (set up
    # before DeepSpeed is imported) sees those records.
    logging.getLogger("DeepSpeed").addFilter(noise)
    for handler in logging.getLogger("transformers").handlers:
        handler.addFilter(noise)
    if not sys.stderr.isatty():
        import datasets

        datasets.disable_progress_bars()
        transformers_logging.disable_progress_bar()


def progress_bar(total: int | None, desc: str, enabled: bool, initial: int = 0, unit: str = "it"):
    """A tqdm bar on stderr, drawn only when stderr is a terminal (no \\r junk in log files)."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                file=sys.stderr, disable=not enabled or not sys.stderr.isatty(), leave=False)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    text = str(datetime.timedelta(seconds=rest))
    return f"{days}d {text}" if days else text


def run_tool(body) -> int:
    """A command-line tool's exit status: ``body()``'s (None is 0), 2 with one ``error:`` line
    for a UserError, 130 on Ctrl-C. Shared by every ``python -m train_loop.<tool>``."""
    make_line_buffered()
    quiet_library_output()
    try:
        try:
            return body() or 0
        except OSError as err:  # a full disk, a read-only folder: the user's to fix, so one line
            problem = storage_error(err)
            if problem is None:
                raise
            raise problem from None
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
