"""Several processes (DDP over gloo) and DeepSpeed ZeRO-2/3 on CPU give the single-process numbers.

Each multi-process run goes through `accelerate launch` with the project's own config files
from launch/accelerate/, so those files are exercised as a user would use them.
"""

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, SENTENCES, launch, train_args, write_audiofolder
from safetensors.torch import load_file

from train_loop import main as train_main
from train_loop.core.errors import UserError
from train_loop.training.config import TrainConfig, parse_train_config
from train_loop.training.distributed import fill_deepspeed_config

# Transcripts of different lengths, so a wrong loss normalization would show.
TRAIN = [f"{SENTENCES[i % len(SENTENCES)]} {'слова ' * (i % 4)}{i}" for i in range(12)]
RUN = dict(per_device_train_batch_size=2, max_steps=4, warmup_steps=1, learning_rate=5e-3,
           eval_steps=2, save_steps=2, per_device_eval_batch_size=2, test_split_name="none",
           mixed_precision="no")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist-data")
    return write_audiofolder(root, {"train": TRAIN, "validation": SENTENCES[:5]}, seconds=0.5)


@pytest.fixture(scope="module")
def single(tiny_model_dir, data, tmp_path_factory):
    """One process with the global batch (4) in one micro-batch."""
    out = tmp_path_factory.mktemp("single")
    flags = {**RUN, "per_device_train_batch_size": 4}
    assert train_main.main(train_args(tiny_model_dir, data, out, out / "cache", **flags)) == 0
    return out


def records(out, key):
    with open(Path(out) / "metrics.jsonl", encoding="utf-8") as handle:
        return [r for r in map(json.loads, handle) if key in r]


def eval_ids(out, step):
    with open(Path(out) / "eval" / f"step-{step}.jsonl", encoding="utf-8") as handle:
        return [json.loads(line)["id"] for line in handle]


def assert_same_numbers(out, reference, exact_weights_atol=1e-5):
    for mine, theirs in zip(records(out, "loss"), records(reference, "loss"), strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5), mine["step"]
        assert mine["learning_rate"] == theirs["learning_rate"]
    for mine, theirs in zip(records(out, "eval_wer"), records(reference, "eval_wer"), strict=True):
        assert mine["eval_wer"] == pytest.approx(theirs["eval_wer"])
        assert mine["eval_samples"] == theirs["eval_samples"] == 5
    for step in (2, 4):  # every clip exactly once, though 5 clips do not fill 2 processes x 2
        assert sorted(eval_ids(out, step)) == sorted(eval_ids(reference, step))
        assert len(set(eval_ids(out, step))) == 5
    mine, theirs = load_file(Path(out) / "model.safetensors"), load_file(Path(reference) / "model.safetensors")
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name], tensor, rtol=0, atol=exact_weights_atol)


@pytest.mark.parametrize("batch, accumulation", [pytest.param(2, 1, marks=pytest.mark.slow), (1, 2)])
def test_two_processes_equal_one_process_with_the_global_batch(tiny_model_dir, data, single, tmp_path,
                                                               batch, accumulation):
    """2 processes x batch 2, and 2 processes x batch 1 x 2 accumulation steps (DDP syncs only
    the last micro-batch's gradients), give the numbers of 1 process x batch 4."""
    out = tmp_path / "ddp"
    result = launch("launch/accelerate/multi_gpu.yaml",
                    train_args(tiny_model_dir, data, out, tmp_path / "cache",
                               **{**RUN, "per_device_train_batch_size": batch,
                                  "gradient_accumulation_steps": accumulation}))
    assert "2 process(es) on cpu" in result.stdout
    assert result.stdout.count("step 1/4") == 1  # one process logs
    assert_same_numbers(out, single)


# Slow: the accumulation test below runs ZeRO-2 against the same single-process numbers with a
# stricter layout (batch 1 x 2 steps), and test_precision runs ZeRO-2/3 in bf16 by default.
@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_gives_the_numbers_of_one_process(tiny_model_dir, data, single, tmp_path, stage):
    out = tmp_path / stage
    launch(f"launch/accelerate/deepspeed_{stage}.yaml",
           train_args(tiny_model_dir, data, out, tmp_path / "cache", **RUN))
    # Same losses, WER and (consolidated, from_pretrained-loadable) weights as one process.
    # (Resuming under DeepSpeed is tested in test_precision.py, in bf16.)
    assert_same_numbers(out, single, exact_weights_atol=1e-5)
    from transformers import WhisperForConditionalGeneration

    WhisperForConditionalGeneration.from_pretrained(out / "checkpoint-2")


@pytest.mark.parametrize("stage", ["zero2", pytest.param("zero3", marks=pytest.mark.slow)])
def test_zero_with_accumulation_equals_one_process_with_the_global_batch(tiny_model_dir, data, single, tmp_path,
                                                                         stage):
    """2 processes x batch 1 x 2 accumulation steps under ZeRO = 1 process x batch 4: DeepSpeed
    accumulates and averages itself, and the loss is still normalized by the whole step's tokens."""
    out = tmp_path / f"{stage}-accumulation"
    launch(f"launch/accelerate/deepspeed_{stage}.yaml",
           train_args(tiny_model_dir, data, out, tmp_path / "cache",
                      **{**RUN, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 2}))
    assert_same_numbers(out, single, exact_weights_atol=1e-5)


LORA = dict(use_lora="true", lora_r=4, lora_alpha=8, lora_dropout=0.0)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["multi_gpu", "deepspeed_zero2"])
def test_lora_on_two_processes_gives_the_numbers_of_one(tiny_model_dir, data, tmp_path, config):
    """LoRA under DDP and ZeRO-2: the losses, WER and merged final weights of one process
    with the global batch."""
    single = tmp_path / "single"
    assert train_main.main(train_args(tiny_model_dir, data, single, tmp_path / "cache",
                                      **{**RUN, **LORA, "per_device_train_batch_size": 4})) == 0
    out = tmp_path / config
    result = launch(f"launch/accelerate/{config}.yaml", train_args(tiny_model_dir, data, out, tmp_path / "cache",
                                                                  **{**RUN, **LORA}))
    assert "parameters train (" in result.stdout
    assert_same_numbers(out, single, exact_weights_atol=1e-5)
    assert not any("lora" in name for name in load_file(out / "model.safetensors"))


# --------------------------------------------------------------------------------------------
# Every shipped config is valid
# --------------------------------------------------------------------------------------------

LAUNCH = sorted((ROOT / "launch" / "accelerate").glob("*.yaml"))
DS_CONFIGS = sorted((ROOT / "ds_configs").glob("*.json"))
RECIPES = sorted((ROOT / "launch" / "recipes").glob("*.yaml"))


@pytest.mark.unit
@pytest.mark.parametrize("path", LAUNCH, ids=lambda p: p.name)
def test_accelerate_config_files_load(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_processes >= 1 and config.machine_rank == 0
    if config.distributed_type.value == "DEEPSPEED":
        ds_file = ROOT / config.deepspeed_config["deepspeed_config_file"]
        assert ds_file.is_file(), f"{path.name} names a missing {ds_file}"
        assert config.deepspeed_config.get("zero3_init_flag") is False
    else:
        assert config.mixed_precision == "bf16"
    if config.num_machines > 1:
        assert config.main_process_ip and config.main_process_port


class _FakePlugin:
    def __init__(self, ds):
        self.deepspeed_config = ds


class _FakeState:
    def __init__(self, ds):
        self.deepspeed_plugin = _FakePlugin(ds)


class _FakeAccelerator:
    def __init__(self, ds, processes=8, precision="bf16"):
        self.state, self.num_processes, self.mixed_precision = _FakeState(ds), processes, precision


def _training(**overrides):
    return parse_train_config(["--output_dir", "x", "--data_dir", "x", "--max_steps", "10",
                               *[f"--{k}={v}" for k, v in overrides.items()]]).training


@pytest.mark.unit
@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
def test_deepspeed_configs_fill_every_auto_from_the_flags(path):
    ds = json.loads(path.read_text())
    stage = ds["zero_optimization"]["stage"]
    assert stage in (2, 3) and "optimizer" not in ds and "scheduler" not in ds
    fill_deepspeed_config(_FakeAccelerator(ds), _training(per_device_train_batch_size=16,
                                                          gradient_accumulation_steps=4))
    assert ds["train_micro_batch_size_per_gpu"] == 16 and ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 16 * 4 * 8 and ds["gradient_clipping"] == 1.0
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    # What is still "auto" accelerate fills from the model's size at prepare time.
    left = {k for k, v in ds["zero_optimization"].items() if v == "auto"}
    assert left <= {"reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"}
    if "offload" in path.name:
        assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
        # DeepSpeed's CPU Adam runs there for --optim adamw*; not forcing it keeps adafactor possible.
        assert ds["zero_force_ds_cpu_optimizer"] is False


@pytest.mark.unit
def test_deepspeed_config_that_disagrees_with_a_flag_is_an_error():
    ds = {"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 2}}
    with pytest.raises(UserError, match="train_micro_batch_size_per_gpu is 8 but "
                                        "--per_device_train_batch_size gives 16"):
        fill_deepspeed_config(_FakeAccelerator(ds), _training(per_device_train_batch_size=16))
    with pytest.raises(UserError, match="remove the 'scheduler' section"):
        fill_deepspeed_config(_FakeAccelerator({"scheduler": {}}), _training())


@pytest.mark.unit
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipes_are_valid_and_name_existing_launch_configs(path):
    config = parse_train_config(["--config", str(path)])
    assert config.training.per_device_train_batch_size * config.training.gradient_accumulation_steps == 64
    text = path.read_text()
    for word in text.split():
        if word.startswith("launch/accelerate/"):
            assert (ROOT / word.rstrip(".,)")).is_file(), word
    recipe = yaml.safe_load(text)
    assert recipe["model_name_or_path"].startswith("openai/whisper-")
    # Common Voice as Mozilla ships it today: a release folder, not the withdrawn Hub copy.
    assert recipe["data_dir"].startswith("cv-corpus-") and "dataset_name" not in recipe


@pytest.mark.unit
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipes_hold_only_what_differs_from_the_defaults(path):
    """A recipe restating a default hides what it changes (and goes stale when the default
    moves). Only the model is always named: it is what the recipe is about."""
    defaults = TrainConfig().to_flat_dict()
    recipe = yaml.safe_load(path.read_text())
    restated = [key for key, value in recipe.items() if key != "model_name_or_path" and value == defaults[key]]
    assert restated == [], f"{path.name} restates defaults: {restated}"


# --------------------------------------------------------------------------------------------
# Memory options
# --------------------------------------------------------------------------------------------


def test_memory_options_train_and_8bit_is_a_clear_error_on_cpu(tiny_model_dir, dataset_dir, tmp_path, capsys):
    out = tmp_path / "fused"
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, out, tmp_path / "c", optim="adamw_fused",
                                      gradient_checkpointing="true", freeze_encoder="true",
                                      apply_spec_augment="true", mask_time_prob=0.2, mask_feature_prob=0.1,
                                      max_steps=2, eval_split_name="none", test_split_name="none")) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["apply_spec_augment"] is True and saved["mask_time_prob"] == 0.2
    assert saved["use_cache"] is True  # switched off for training, back on for whoever loads it
    start, final = load_file(Path(tiny_model_dir) / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(start[k], final[k]) for k in final if k.startswith("model.encoder."))
    assert any(not torch.equal(start[k], final[k]) for k in final if k.startswith("model.decoder."))

    code = train_main.main(train_args(tiny_model_dir, dataset_dir, tmp_path / "8bit", tmp_path / "c",
                                      optim="adamw_8bit"))
    assert code == 2
    assert "--optim adamw_8bit needs a CUDA GPU" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Several nodes (two `accelerate launch` commands on this machine, one process each)
# --------------------------------------------------------------------------------------------


def _two_nodes(tiny_model_dir, data, cwds, output_dir, tmp_path):
    """Start "node" 0 and 1 from their own working directories; a relative path then stands
    for a disk of that node's own, an absolute one for a shared file system."""
    import subprocess

    from conftest import free_port, launch_command

    port = str(free_port())
    args = train_args(tiny_model_dir, data, output_dir, "cache", **{**RUN, "max_steps": 2})
    processes = []
    for rank, cwd in enumerate(cwds):
        command, env = launch_command("launch/accelerate/multi_node.yaml", args, processes=2, launcher_flags=(
            "--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
            "--main_process_port", port))
        processes.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    return [(p.communicate(timeout=600)[0], p.returncode) for p in processes]


def test_two_nodes_prepare_their_own_caches_and_share_the_output_dir(tiny_model_dir, data, tmp_path):
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
    shared = tmp_path / "shared" / "run"
    results = _two_nodes(tiny_model_dir, data, nodes, shared, tmp_path)
    assert [code for _, code in results] == [0, 0], results[0][0][-3000:] + results[1][0][-3000:]
    # Each node prepared the features into its own (relative, node-local) cache.
    for node in nodes:
        assert len(list((node / "cache" / "prepared").iterdir())) == 2  # train and validation
    # The completed checkpoint holds the files of both processes.
    for name in ("data_state_0.pt", "data_state_1.pt", "random_states_0.pkl", "random_states_1.pkl"):
        assert (shared / "checkpoint-2" / name).is_file(), name


def test_an_output_dir_that_another_node_cannot_see_is_a_clear_error(tiny_model_dir, data, tmp_path):
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
    results = _two_nodes(tiny_model_dir, data, nodes, "runs/x", tmp_path)  # relative: not shared
    for output, code in results:
        assert code != 0
        assert ("error: --output_dir runs/x: process 1 on" in output and
                "cannot see the files the main process writes there. Every node must see the same "
                "output_dir" in output), output[-3000:]
    assert not (nodes[0] / "runs" / "x" / "checkpoint-1").exists()  # stopped before training


class _FakeProcess:
    """What once_per_node reads of an Accelerator, for one of 4 threads = 2 nodes x 2 processes."""

    def __init__(self, rank, barrier):
        self.is_main_process, self.is_local_main_process = rank == 0, rank % 2 == 0
        self.barrier = barrier

    def wait_for_everyone(self):
        self.barrier.wait(timeout=10)


def test_caches_are_prepared_by_the_main_process_then_each_nodes_first_then_the_rest():
    import threading

    from train_loop.core.processes import once_per_node

    barrier, order, lock = threading.Barrier(4), [], threading.Lock()

    def process(rank):
        def prepare():
            with lock:
                order.append(rank)
            return rank

        assert once_per_node(_FakeProcess(rank, barrier), prepare) == rank

    threads = [threading.Thread(target=process, args=(rank,)) for rank in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert order[0] == 0 and order[1] == 2 and sorted(order[2:]) == [1, 3]


@pytest.mark.unit
def test_cpu_adam_that_cannot_be_built_is_a_clear_error(monkeypatch):
    import deepspeed.ops.adam

    from train_loop.training.optim import build_optimizer

    def cannot_build(*args, **kwargs):
        raise RuntimeError("Error building extension 'cpu_adam'")

    monkeypatch.setattr(deepspeed.ops.adam, "DeepSpeedCPUAdam", cannot_build)
    with pytest.raises(UserError, match=r"DeepSpeed's CPU Adam could not be built \(Error building extension "
                                        r"'cpu_adam'\)\. Install a C\+\+ compiler and the Python headers"):
        build_optimizer(torch.nn.Linear(2, 2), _training(), offloaded=True)
