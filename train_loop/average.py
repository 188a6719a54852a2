"""Average the weights of saved checkpoints into one model folder.

    python -m train_loop.average runs/be/checkpoint-8000 runs/be/checkpoint-9000 \\
        runs/be/checkpoint-10000 --output_dir runs/be-avg3

What icefall and WeNet report their best numbers with: the element-wise mean of the last few
checkpoints of one run is usually a little better than any of them. Each input is a folder
with ``model.safetensors`` (a ``checkpoint-N``, under DeepSpeed too, or a final model folder);
all must have the same parameters and shapes. The output is a plain Whisper folder (weights,
config, generation config, processor) that ``from_pretrained``, ``pipeline``,
``train_loop.evaluate``, ``transcribe`` and ``export`` read, plus ``averaged_from.json`` naming
the inputs. The mean is accumulated in float64 and saved in ``--save_dtype``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from .core.console import run_tool
from .core.errors import UserError
from .core.flags import flag, parse_sections
from .core.paths import overlaps, replace_folder

WEIGHTS = "model.safetensors"
RECORD = "averaged_from.json"  # which checkpoints; also how this command knows a folder is its own


@dataclass
class AverageConfig:
    """Checkpoint averaging."""
    _argument_group_name = "Checkpoint averaging"

    output_dir: str | None = flag(None, "Folder for the averaged model (required).")
    save_dtype: str = flag("float32", "Dtype of the saved weights.", ("float32", "bfloat16", "float16"))


def main(argv: list[str] | None = None) -> int:
    def body():
        sections = parse_sections({"average": AverageConfig}, argv, prog="train_loop.average",
                                  description=__doc__.split("\n\n")[0],
                                  positional=("folders", "checkpoint folders to average (two or more)"))
        options = sections["average"]
        average_checkpoints(sections["folders"], options.output_dir, options.save_dtype)

    return run_tool(body)


def average_checkpoints(folders: list[str], output_dir: str | None, save_dtype: str = "float32") -> str:
    import torch
    from safetensors import safe_open

    from .core.console import progress_bar

    if not output_dir:
        raise UserError("--output_dir is required: the folder the averaged model goes to")
    if len(folders) < 2:
        raise UserError(f"give two or more checkpoint folders to average (got {len(folders)})")
    for folder in folders:
        if not os.path.isfile(os.path.join(folder, WEIGHTS)):
            raise UserError(f"{folder}: no {WEIGHTS} here; give checkpoint-N folders or model folders "
                            "saved by this project")
    for folder in folders:
        if overlaps(output_dir, folder):
            raise UserError(f"--output_dir {output_dir} overlaps the input {folder} (the same folder, or one inside "
                            "the other); choose a new folder")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not os.path.isfile(os.path.join(output_dir, RECORD)):
        raise UserError(f"--output_dir {output_dir} holds files this command did not write (no {RECORD}); "
                        "choose a new or empty folder")
    totals: dict[str, torch.Tensor] = {}
    reference: dict[str, tuple] = {}
    bar = progress_bar(len(folders), "average", enabled=True, unit="checkpoint")
    for index, folder in enumerate(folders):
        with safe_open(os.path.join(folder, WEIGHTS), framework="pt") as weights:
            names = set(weights.keys())
            if index == 0:
                reference = {name: tuple(weights.get_slice(name).get_shape()) for name in names}
            elif names != set(reference):
                different = sorted(names ^ set(reference))
                raise UserError(f"{folder}: its parameters differ from {folders[0]}'s ({', '.join(different[:3])}"
                                f"{' ...' if len(different) > 3 else ''}); average checkpoints of one run")
            for name in names:
                tensor = weights.get_tensor(name)
                if tuple(tensor.shape) != reference[name]:
                    raise UserError(f"{folder}: {name} has shape {tuple(tensor.shape)}, {folders[0]} has "
                                    f"{reference[name]}; average checkpoints of one run")
                if name not in totals:
                    totals[name] = torch.zeros(tensor.shape, dtype=torch.float64)
                totals[name] += tensor.double()
        bar.update(1)
    bar.close()
    averaged = {name: (total / len(folders)).float() for name, total in totals.items()}

    def write(folder: str) -> None:
        _save(folders[0], averaged, folder, save_dtype)
        with open(os.path.join(folder, RECORD), "w", encoding="utf-8") as handle:
            json.dump({"checkpoints": [os.path.abspath(f) for f in folders], "method": "element-wise mean"},
                      handle, indent=2)

    replace_folder(output_dir, write)  # an earlier average stays whole until this one is complete
    print(f"averaged {len(folders)} checkpoints into {output_dir} ({save_dtype} weights; from_pretrained ready)")
    return output_dir


def _save(template: str, weights: dict, output_dir: str, dtype: str) -> None:
    """The averaged weights with the first input's config, generation config and processor."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from .core.model import save_model_folder, save_processor

    model = WhisperForConditionalGeneration.from_pretrained(template)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [name for name in missing if name != "proj_out.weight"]  # tied: stored once
    if missing or unexpected:
        raise UserError(f"{template}: the weights do not match its config.json (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    os.makedirs(output_dir, exist_ok=True)
    save_model_folder(model, output_dir, model.state_dict(), dtype)
    model.generation_config.save_pretrained(output_dir)
    try:
        save_processor(WhisperProcessor.from_pretrained(template), output_dir)
    except OSError as err:
        raise UserError(f"{template}: no processor files to copy ({err}); average folders saved by this "
                        "project") from None


if __name__ == "__main__":
    sys.exit(main())
