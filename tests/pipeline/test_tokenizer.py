from common.tokenizer import write_clip_tokenizer

# Words whose letter pairs overlap, so merges made for one could split another.
WORDS = ["a", "an", "and", "background", "triangle", "angle", "tri", "green", "large", "left", "star", "square"]


def test_every_word_is_one_token_and_other_text_still_tokenizes(tmp_path):
    tokenizer = write_clip_tokenizer(WORDS, tmp_path)
    for word in WORDS:
        assert tokenizer.tokenize(word) == [word + "</w>"]
    assert tokenizer.tokenize("a green triangle and a square") == [
        "a</w>", "green</w>", "triangle</w>", "and</w>", "a</w>", "square</w>"
    ]
    ids = tokenizer("zebra").input_ids  # unknown words fall back to characters, never to <unk>
    assert tokenizer.decode(ids, skip_special_tokens=True) == "zebra"


def test_the_files_load_again_offline(tmp_path):
    first = write_clip_tokenizer(WORDS, tmp_path)
    again = type(first).from_pretrained(tmp_path, local_files_only=True)
    assert again("a large star").input_ids == first("a large star").input_ids
    assert again.model_max_length == 77
