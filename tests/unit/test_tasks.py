from pathlib import Path

import pytest
import transformers

from quantization.tasks import get_task
from quantization.tasks.ner import NerInput, entity_f1, get_entities, iob1_to_iob2, read_conll
from quantization.tasks.qa import QAInput, exact_match, f1_score, normalize_answer


def test_iob1_to_iob2() -> None:
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG", "I-MISC", "I-MISC"]
    assert iob1_to_iob2(iob1) == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG", "B-MISC", "I-MISC"]


def test_get_entities_follows_seqeval_default_chunking() -> None:
    assert get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    # seqeval (default mode) starts a chunk at an I- after O, and splits on a type change.
    assert get_entities(["O", "I-ORG", "I-ORG", "I-LOC"]) == [("ORG", 1, 2), ("LOC", 3, 3)]
    assert get_entities(["B-PER", "B-PER"]) == [("PER", 0, 0), ("PER", 1, 1)]


def test_entity_f1_hand_computed() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-MISC"]]
    scores = entity_f1(gold, pred)  # 2 correct of 3 predicted, of 3 true
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["entity_f1"] == pytest.approx(2 / 3)


def test_read_conll_skips_docstart_and_keeps_sentences(tiny_data: Path) -> None:
    sentences = read_conll(tiny_data / "conll2003" / "eng.testa")
    assert [len(w) for w, _ in sentences] == [6, 3]
    assert sentences[0][1][:2] == ["I-PER", "I-PER"]


def test_squad_normalization_and_scores() -> None:
    assert normalize_answer("The  Eiffel, Tower!") == "eiffel tower"
    assert exact_match("the Eiffel Tower", "Eiffel tower.") == 1.0
    assert f1_score("Eiffel Tower in Paris", "the Eiffel Tower") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert f1_score("", "x") == 0.0


def test_ner_words_from_text_keep_character_offsets() -> None:
    item = NerInput.from_text("John Smith, of Acme-Corp.")
    assert item.words == ["John", "Smith", ",", "of", "Acme", "-", "Corp", "."]
    assert [item.text[a:b] for a, b in item.spans] == item.words


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoints: dict) -> transformers.PreTrainedTokenizerBase:
    return transformers.AutoTokenizer.from_pretrained(tiny_checkpoints["qa"])


def test_qa_windows_cover_a_long_context(tokenizer: transformers.PreTrainedTokenizerBase) -> None:
    context = " ".join(["john lives in paris ."] * 60)
    features = get_task("qa").preprocess(tokenizer, QAInput("where does john live ?", context), max_length=64)
    assert len(features) > 5
    assert all(len(f) <= 64 for f in features)
    covered = {span for f in features for span in f.meta["offsets"] if span is not None}
    assert max(end for _, end in covered) == len(context)  # nothing silently truncated
    assert all(f.input_ids[0] == tokenizer.cls_token_id for f in features)


def test_qa_refuses_a_question_longer_than_half_a_window(tokenizer: transformers.PreTrainedTokenizerBase) -> None:
    with pytest.raises(ValueError, match="question is"):
        get_task("qa").preprocess(tokenizer, QAInput("who " * 40, "paris"), max_length=64)


def test_sst2_reads_glue_tsv(tiny_data: Path, tmp_path: Path) -> None:
    examples = get_task("sst2").read_examples(tiny_data / "sst2" / "dev.tsv")
    assert len(examples) == 12
    assert examples[1].gold == 1
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tgold\nx\t1\n")
    with pytest.raises(ValueError, match="`sentence` and `label`"):
        get_task("sst2").read_examples(bad)


def _window_logits(features, tags_by_word, labels, wrong_near_edges=0):  # noqa: ANN001, ANN202
    """Per-window logits that tag each word by `tags_by_word`; within `wrong_near_edges` positions of a window's
    edge that cuts the text (a seam) a word's tag is B-MISC instead (what a window with little context might say)."""
    import torch

    outputs = []
    for index, feature in enumerate(features):
        word_ids = feature.meta["word_ids"]
        positions = [i for i, w in enumerate(word_ids) if w is not None]
        left_seam, right_seam = index > 0, index < len(features) - 1
        logits = torch.zeros(len(word_ids), len(labels))
        for i, word in enumerate(word_ids):
            tag = "O" if word is None else tags_by_word(word)
            near_left = left_seam and i - positions[0] < wrong_near_edges
            near_right = right_seam and positions[-1] - i < wrong_near_edges
            if word is not None and (near_left or near_right):
                tag = "B-MISC"
            logits[i, labels.index(tag)] = 5.0
        outputs.append(logits)
    return outputs


def test_ner_slides_windows_over_long_texts_and_merges_entities_once(tmp_path: Path) -> None:
    from tests.conftest import TASK_HEADS, VOCAB

    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=True)
    labels = TASK_HEADS["ner"][1]
    words = ["john", "lives", "in", "paris", "."] * 40  # 200 words, about three 64-token windows
    item = NerInput.from_words(words)
    task = get_task("ner")
    features = task.preprocess(tokenizer, item, 64)
    assert len(features) >= 3
    assert all(len(f) <= 64 for f in features)
    covered = {w for f in features for w in f.meta["word_ids"] if w is not None}
    assert covered == set(range(len(words)))

    def tag(word: int) -> str:
        return {"john": "B-PER", "paris": "B-LOC"}.get(words[word], "O")

    # windows that disagree near their edges: each word is read from the window where it has the most context
    prediction = task.postprocess(item, features, _window_logits(features, tag, labels, wrong_near_edges=6), labels)
    spans = [(e.start, e.end) for e in prediction.entities]
    assert len(spans) == len(set(spans)) == 80
    assert [e.type for e in prediction.entities] == ["PER", "LOC"] * 40
    assert all(item.text[e.start : e.end] == e.text for e in prediction.entities)
    thirds = {3 * e.start // len(item.text) for e in prediction.entities}
    assert thirds == {0, 1, 2}


def test_ner_short_texts_are_one_window_as_before(tmp_path: Path) -> None:
    from tests.conftest import VOCAB

    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=True)
    item = NerInput.from_text("John Smith lives in Paris .")
    (feature,) = get_task("ner").preprocess(tokenizer, item, 64)
    assert feature.input_ids == tokenizer(item.words, is_split_into_words=True)["input_ids"]
