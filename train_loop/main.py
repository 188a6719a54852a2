"""Fine-tune Whisper on a new language.

    accelerate launch train_loop/main.py --model_name_or_path openai/whisper-small \\
        --data_dir cv-corpus-11.0-2022-09-21/be --language be --output_dir runs/small-be \\
        --max_steps 12000 --mixed_precision bf16 ...
    python -m train_loop.main --config launch/recipes/whisper-small-cv11-be.yaml
    python -m train_loop.main --help

``run`` is the table of contents: setup (the session, model, data, optimizer and schedule, state
fresh or resumed), train, finish (the final model, the test split, what the run leaves behind).
Each step is a function of ``training/setup.py``, ``training/loop.py`` or ``training/finish.py``.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    # Run as a script (`accelerate launch train_loop/main.py`): make the package importable,
    # and keep train_loop/ itself off sys.path so its evaluate.py cannot shadow packages.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))
    __package__ = "train_loop"

from train_loop.core.console import make_line_buffered, quiet_library_output
from train_loop.core.errors import EXIT_INTERRUPTED, EXIT_STOPPED, StoppedBeforeTraining, UserError, storage_error
from train_loop.training.config import TrainConfig, parse_train_config


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 trained to the end; 2 a problem to fix (the message says what); 75 stopped
    by SIGTERM/SIGINT, resumable with --resume_from latest; 130 a second Ctrl-C."""
    make_line_buffered()
    config = None
    try:
        config = parse_train_config(argv)  # --help and a bad flag answer here, before torch loads
        quiet_library_output()
        return run(config, list(sys.argv[1:] if argv is None else argv))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except OSError as err:  # a full disk or a read-only folder outside the checks that name it better
        problem = storage_error(err)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr, flush=True)
        return 2
    except StoppedBeforeTraining as stop:
        print(f"{stop.signal_name} received before training started: stopped (nothing to save; prepared "
              "features are cached for the next start)", file=sys.stderr, flush=True)
        return EXIT_STOPPED
    except KeyboardInterrupt:
        print("stopped at once (second Ctrl-C), without a new checkpoint; an unfinished one is removed at "
              f"the next start. {_how_to_continue(config)}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


def _how_to_continue(config: TrainConfig | None) -> str:
    """Resume advice that holds: only a run with a checkpoint can be resumed."""
    output_dir = config.training.output_dir if config is not None else None
    if output_dir and os.path.isdir(output_dir) and any(
            name.startswith("checkpoint-") and not name.endswith(".partial") for name in os.listdir(output_dir)):
        return "Continue with the same command plus --resume_from latest"
    return "No checkpoint was saved yet: run the same command again (with --overwrite_output_dir if it says so)"


def run(config: TrainConfig, argv: list[str]) -> int:
    """Train; return 0 when done, EXIT_STOPPED when a signal stopped the run (checkpoint saved)."""
    # The parts load torch, transformers and accelerate: imported once the flags are known.
    from train_loop.training import finish, setup
    from train_loop.training.checkpoint import run_manifest
    from train_loop.training.loop import Progress, Run, train

    # 1. The session: processes and precision, the output folder (locked), trackers, signals, log.
    with setup.session(config) as session:
        # 2. Model and processor (LoRA adapters with --use_lora).
        model, processor, adapters = setup.model_and_processor(config, session)
        # 3. Data: every skipped clip is counted and reported.
        train_batches = setup.training_data(config, processor, session)
        eval_targets = setup.evaluation_sets(config, processor, session)
        if config.data.prepare_only:
            return setup.prepare_only(config, processor, session, train_batches, eval_targets)
        # 4. Optimizer, weight average, accelerator.prepare; the LR schedule, a pure function of the step.
        trainable = setup.optimization(config, session, model, adapters)
        schedule = setup.lr_schedule(config, train_batches)
        # 5. State: fresh, or restored from a checkpoint (and checked against this run's flags).
        state, schedule = setup.start_or_resume(config, session, train_batches, schedule, lora=adapters is not None,
                                                ema=trainable.ema)

        # 6. Train.
        run = Run(config=config, accelerator=session.accelerator, model=trainable.model,
                  optimizer=trainable.optimizer, schedule=schedule, processor=processor,
                  train_batches=train_batches, eval_targets=eval_targets,
                  generation=setup.generation_settings(config), normalizer=setup.scoring_normalizer(config),
                  logger=session.logger, stop_requested=session.stop_signal.requested,
                  manifest=run_manifest(argv, train_batches.fingerprint, session.accelerator.num_processes),
                  frozen_fp32=trainable.frozen_fp32, hub=session.hub, ema=trainable.ema, adapters=adapters)
        progress = Progress(state, start_step=state.step)
        session.stop_signal.training_started()
        try:
            completed = train(run, progress)
        finally:
            train_batches.close()  # its workers end now, not at interpreter exit
        # 7. The final model (the best with --load_best_model_at_end), the test split, results.
        try:
            if not completed:
                return finish.stopped(run, progress, session.stop_signal.signal_name)
            return finish.finish(run, progress)
        finally:
            finish.close(run)


if __name__ == "__main__":
    sys.exit(main())
