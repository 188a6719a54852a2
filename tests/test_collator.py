import numpy as np
import pytest
import torch
from conftest import tone

from train_loop.data.build import collator_for
from train_loop.data.collator import IGNORE_INDEX, SpeechCollator
from train_loop.data.config import DataConfig
from train_loop.data.features import featurizer_for

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def featurizer(processor):
    return featurizer_for(processor, DataConfig(prepared_feature_dtype="float32"), "belarusian")


@pytest.fixture(scope="module")
def collator(processor):
    return collator_for(processor)


@pytest.mark.parametrize("seconds", [0.05, 0.73, 1.5, 2.0])
def test_cropped_features_rebuild_the_padded_window_exactly(processor, featurizer, collator, seconds):
    waveform = tone(seconds)
    reference = processor.feature_extractor(waveform, sampling_rate=16000, return_tensors="np").input_features[0]
    example = featurizer("a", {"array": waveform, "sampling_rate": 16000}, "Сям'я.")
    assert example["input_features"].shape[1] < reference.shape[1] or seconds >= 2.0
    batch = collator([example])
    np.testing.assert_array_equal(batch["input_features"][0].numpy(), reference)


def test_collator_shapes_padding_and_label_masking(processor, featurizer, collator):
    tokenizer = processor.tokenizer
    short = featurizer("s", {"array": tone(0.5), "sampling_rate": 16000}, "Так.")
    long = featurizer("l", {"array": tone(1.2), "sampling_rate": 16000}, "Мая сям'я жыве ў вялікім горадзе.")
    batch = collator([short, long])

    frames = processor.feature_extractor.nb_max_frames
    assert batch["input_features"].shape == (2, 80, frames)
    assert batch["input_features"].dtype == torch.float32
    labels, decoder_inputs = batch["labels"], batch["decoder_input_ids"]
    assert labels.shape == decoder_inputs.shape == (2, len(long["labels"]) - 1)

    start = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    prefix = tokenizer.convert_tokens_to_ids(["<|be|>", "<|transcribe|>", "<|notimestamps|>"])
    # The decoder-start token is an input, never a target; the language/task prefix is a target.
    assert labels[:, :3].tolist() == [prefix, prefix]
    assert (labels != start).all()
    assert decoder_inputs[:, 0].tolist() == [start, start]
    # Decoder inputs are the labels shifted right.
    assert decoder_inputs[1, 1:].tolist() == labels[1, :-1].tolist()
    # Padding of the shorter transcript is ignored by the loss.
    n_short = len(short["labels"]) - 1
    assert (labels[0, n_short:] == IGNORE_INDEX).all()
    assert (labels[0, :n_short] != IGNORE_INDEX).all()
    assert labels[0, n_short - 1] == tokenizer.eos_token_id
    assert tokenizer.decode(labels[1][labels[1] != IGNORE_INDEX], skip_special_tokens=True) == \
        "Мая сям'я жыве ў вялікім горадзе."


def test_labels_without_a_start_token_are_kept_whole():
    collator = SpeechCollator(decoder_start_token_id=1, pad_token_id=0, total_frames=4)
    example = {"id": "x", "text": "", "input_features": np.zeros((80, 2), np.float32), "pad_value": -1.0,
               "labels": [5, 6, 7]}
    batch = collator([example])
    assert batch["labels"].tolist() == [[5, 6, 7]]
    assert batch["decoder_input_ids"].tolist() == [[1, 5, 6]]
    assert batch["input_features"][0, :, 2:].eq(-1.0).all()
