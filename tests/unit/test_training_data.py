"""Training targets per task, their collation, and the training batch stream."""

from pathlib import Path

import pytest
import torch
import transformers

from quantization.feature_tensors import collate_training
from quantization.tasks import Example, get_task
from quantization.tasks.base import IGNORE_INDEX
from quantization.tasks.ner import NerInput
from quantization.tasks.qa import AnswerSpan, QAInput, read_squad_answers
from quantization.train_data import encode_training_set, subsample, training_batches
from tests.conftest import TASK_HEADS


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoints: dict) -> transformers.PreTrainedTokenizerBase:
    return transformers.AutoTokenizer.from_pretrained(tiny_checkpoints["qa"])


NER_LABELS = {label: i for i, label in enumerate(TASK_HEADS["ner"][1])}


def test_sst2_targets_are_the_glue_label(tokenizer: transformers.PreTrainedTokenizerBase) -> None:
    (feature,) = get_task("sst2").training_features(tokenizer, Example("a good movie", 1), 32, {})
    assert feature.meta["targets"] == {"labels": 1}


def test_ner_targets_sit_on_first_subtokens_only(tokenizer: transformers.PreTrainedTokenizerBase) -> None:
    words = ["john", "acme-corp", "lives", "in", "paris"]  # one word, several tokens
    example = Example(NerInput.from_words(words), ["B-PER", "I-PER", "O", "O", "B-LOC"])
    (feature,) = get_task("ner").training_features(tokenizer, example, 32, NER_LABELS)
    targets, word_ids = feature.meta["targets"]["labels"], feature.meta["word_ids"]
    assert len(targets) == len(feature.input_ids)
    assert word_ids.count(1) > 1
    firsts = [i for i, w in enumerate(word_ids) if w is not None and w not in word_ids[:i]]
    assert [targets[i] for i in firsts] == [NER_LABELS[t] for t in example.gold]
    assert all(t == IGNORE_INDEX for i, t in enumerate(targets) if i not in firsts)  # specials, continuations


def test_ner_refuses_tags_the_model_does_not_know(tokenizer: transformers.PreTrainedTokenizerBase) -> None:
    example = Example(NerInput.from_words(["john"]), ["B-PERSON"])
    with pytest.raises(ValueError, match="B-PERSON"):
        get_task("ner").training_features(tokenizer, example, 32, NER_LABELS)


def test_qa_targets_point_at_the_answer_in_every_window_that_holds_it(
    tokenizer: transformers.PreTrainedTokenizerBase,
) -> None:
    context = "john lives in paris . " * 12 + "acme corp is in rome . " + "john lives in paris . " * 12
    start = context.index("rome")
    example = Example(QAInput("where is acme corp ?", context), AnswerSpan("rome", start))
    features = get_task("qa").training_features(tokenizer, example, 48, {})
    assert len(features) > 3
    holding = 0
    for feature in features:
        s, e = feature.meta["targets"]["start_positions"], feature.meta["targets"]["end_positions"]
        if s == 0:
            assert e == 0  # the answer is not (wholly) in this window: [CLS]
            continue
        holding += 1
        offsets = feature.meta["offsets"]
        assert context[offsets[s][0] : offsets[e][1]] == "rome"
    assert holding >= 1


def test_read_squad_answers_keeps_answer_start(tiny_data: Path) -> None:
    examples = read_squad_answers(tiny_data / "squad" / "dev-v1.1.json", (0, 36))
    assert len(examples) == 36
    span = examples[0].gold
    assert examples[0].input.context[span.start : span.end] == "paris"


def test_collate_pads_token_targets_with_ignore_index(tokenizer: transformers.PreTrainedTokenizerBase) -> None:
    task = get_task("ner")
    short = task.training_features(tokenizer, Example(NerInput.from_words(["paris"]), ["B-LOC"]), 32, NER_LABELS)
    long = task.training_features(
        tokenizer,
        Example(NerInput.from_words(["john", "lives", "in", "paris"]), ["B-PER", "O", "O", "B-LOC"]),
        32,
        NER_LABELS,
    )
    batch = collate_training(short + long)
    assert batch["labels"].shape == batch["input_ids"].shape == (2, len(long[0]))
    assert (batch["labels"][0, len(short[0]) :] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][0, len(short[0]) :] == 0).all()


def test_training_batches_visit_every_feature_each_epoch_and_are_seeded(
    tokenizer: transformers.PreTrainedTokenizerBase,
) -> None:
    sentences = [" ".join(["good"] * (1 + i % 7)) for i in range(24)]
    examples = [Example(s, i % 2) for i, s in enumerate(sentences)]
    features = encode_training_set(get_task("sst2"), tokenizer, examples, 32, {})
    stream = training_batches(features, batch_size=4, seed=3, pool_batches=2)
    epoch = [next(stream) for _ in range(6)]
    seen = sorted(int(row.sum()) for batch in epoch for row in batch["attention_mask"])
    assert seen == sorted(len(f) for f in features)  # each feature once per epoch
    again = training_batches(features, batch_size=4, seed=3, pool_batches=2)
    assert all(torch.equal(a["input_ids"], next(again)["input_ids"]) for a in epoch)
    with pytest.raises(ValueError, match="cannot fill"):
        next(training_batches(features[:3], batch_size=4, seed=0))


def test_subsample_is_seeded_and_complete_when_not_limited() -> None:
    items = list(range(100))
    assert subsample(items, None, 0) == items
    assert subsample(items, 10, 1) == subsample(items, 10, 1)
    assert len(set(subsample(items, 10, 1))) == 10
