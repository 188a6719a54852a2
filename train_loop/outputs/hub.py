"""Upload a run to the Hugging Face Hub (``--push_to_hub``), through ``huggingface_hub``.

* At the start of the run, on the main process: the Hub must be reachable, a token must be
  there, and the repository must exist or be creatable with it. Any of these failing stops the
  run with one line, before any training.
* At the end: the final model folder's files (``FINAL_PATTERNS``; never the checkpoints, logs
  of evaluations, TensorBoard files or the lock) are staged in a temporary folder and uploaded
  in one commit. What is staged is exactly what the repository receives.
* With ``--hub_push_checkpoints``: every checkpoint, whole (resumable), into ``checkpoint-N/``,
  uploaded in the background (``run_as_future``) while training continues; the run waits for
  them at the end.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
from concurrent.futures import Future

from ..core.errors import UserError

# The final model folder's files a model repository holds.
FINAL_PATTERNS = ("config.json", "generation_config.json", "model.safetensors", "model-*.safetensors",
                  "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
                  "merges.txt", "normalizer.json", "added_tokens.json", "special_tokens_map.json",
                  "processor_config.json", "preprocessor_config.json", "README.md", "results.json",
                  "curves.png", "metrics.jsonl")


def final_files(output_dir: str) -> list[str]:
    """The files of ``output_dir`` (top level only) that the upload sends, sorted."""
    return sorted(name for name in os.listdir(output_dir)
                  if os.path.isfile(os.path.join(output_dir, name))
                  and any(fnmatch.fnmatch(name, pattern) for pattern in FINAL_PATTERNS))


def stage_final_files(output_dir: str, staging: str) -> list[str]:
    """Hard-link (or copy) the files to upload into ``staging``; returns their names."""
    names = final_files(output_dir)
    for name in names:
        source, target = os.path.join(output_dir, name), os.path.join(staging, name)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    return names


class HubUpload:
    def __init__(self, repo_id: str, private: bool = False):
        from huggingface_hub import HfApi

        self.repo_id, self.private = repo_id, private
        self.api = HfApi()
        self.pending: list[Future] = []

    def check(self) -> str:
        """Fail now, with the fix, if the upload at the end could not happen; returns the user name."""
        from huggingface_hub.utils import HfHubHTTPError, LocalTokenNotFoundError

        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise UserError("--push_to_hub: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it, or "
                            "train without --push_to_hub and upload later with `hf upload`")
        try:
            user = self.api.whoami()["name"]
            self.api.create_repo(self.repo_id, private=self.private, exist_ok=True, repo_type="model")
        except LocalTokenNotFoundError:
            raise UserError("--push_to_hub: no Hugging Face token on this machine; run `hf auth login` or set "
                            "HF_TOKEN (a token with write access)") from None
        except HfHubHTTPError as err:
            raise UserError(f"--push_to_hub: the Hub refused {self.repo_id} ({_first_line(err)}); check that "
                            "the token may write to it") from None
        except Exception as err:  # no route to the Hub: DNS, proxy, firewall, timeout
            raise UserError(f"--push_to_hub: cannot reach the Hugging Face Hub ({_first_line(err)}); check the "
                            "connection, or train without --push_to_hub and upload later") from None
        return user

    def push_checkpoint(self, path: str) -> None:
        name = os.path.basename(path)
        self.pending.append(self.api.upload_folder(
            repo_id=self.repo_id, folder_path=path, path_in_repo=name,
            commit_message=f"{name} (whisper-train-loop)", run_as_future=True))

    def push_final(self, output_dir: str) -> list[str]:
        """Upload the final model folder in one commit, after any checkpoint still uploading."""
        self.wait()
        with tempfile.TemporaryDirectory(prefix="hub-upload-") as staging:
            names = stage_final_files(output_dir, staging)
            self.api.upload_folder(repo_id=self.repo_id, folder_path=staging,
                                   commit_message="final model (whisper-train-loop)")
        return names

    def wait(self) -> None:
        for future in self.pending:
            future.result()
        self.pending = []


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
