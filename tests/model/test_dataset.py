import numpy as np

from common.tokenizer import write_clip_tokenizer
from shapes import architecture, dataset


def test_items_are_deterministic_and_random_access():
    first = dataset.images([5, 17, 123456], seed=3)
    again = np.stack([dataset.render(dataset.scene(i, 3)) for i in (5, 17, 123456)])
    np.testing.assert_array_equal(first, again)
    assert [dataset.caption_of(i, 3) for i in (5, 17)] == [dataset.caption_of(i, 3) for i in (5, 17)]
    assert first.shape == (3, 64, 64, 3) and first.dtype == np.uint8


def test_seeds_and_indices_give_different_items():
    assert not np.array_equal(dataset.images(range(8), seed=0), dataset.images(range(8), seed=1))
    assert len({dataset.caption_of(i) for i in range(50)}) > 40


def test_scenes_cover_the_world_and_keep_objects_off_the_background():
    scenes = [dataset.scene(i) for i in range(2000)]
    objects = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objects} == set(dataset.SHAPES)
    assert {o.color for o in objects} == set(dataset.COLOR_NAMES)
    assert {o.position for o in objects} == set(dataset.POSITIONS)
    assert {o.size for o in objects} == set(dataset.SIZES)
    assert all(o.color != s.background for s in scenes for o in s.objects)
    assert 0.1 < np.mean([len(s.objects) == 2 for s in scenes]) < 0.2


def test_rendered_pixels_show_the_scene():
    s = dataset.single("square", "red", "large", "center", "blue")
    image = dataset.render(s)
    assert tuple(image[32, 32]) == dataset.COLORS["red"]
    assert tuple(image[2, 2]) == dataset.COLORS["blue"]


def test_captions_range_from_full_to_plain():
    s = dataset.single("circle", "red", "small", "top left", "blue")
    assert dataset.caption(s) == "a small red circle in the top left on a blue background"
    forms = {dataset.caption(s, np.random.default_rng(i)) for i in range(64)}
    assert "a red circle" in forms and len(forms) == 8


def test_prompts_name_what_their_text_says():
    for prompt in dataset.prompts(200, seed=7):
        assert prompt.named["shape"] in prompt.text and prompt.named["color"] in prompt.text
        assert ("background" in prompt.named) == ("background" in prompt.text)
        assert ("size" in prompt.named) == any(f" {size} " in prompt.text for size in dataset.SIZES)


def test_the_vocabulary_tokenizer_reads_every_caption_back(tmp_path):
    tokenizer = write_clip_tokenizer(dataset.VOCABULARY, tmp_path)
    longest = 0
    for i in range(500):
        text = dataset.caption_of(i)
        ids = tokenizer(text).input_ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
        longest = max(longest, len(ids))
    assert longest <= architecture.MAX_TOKENS  # these captions reach the text encoder whole


def test_parse_reads_back_what_each_caption_names():
    for i in range(500):
        s = dataset.scene(i, 9)
        objects, background = dataset.parse(dataset.caption(s, np.random.default_rng(i)))
        assert len(objects) == len(s.objects)
        for named, obj in zip(objects, s.objects):
            assert {"shape", "color"} <= named.keys()
            assert all(getattr(obj, attribute) == value for attribute, value in named.items())
        assert background in (None, s.background)
    assert dataset.parse("a small red circle in the top left on a blue background") == (
        [{"position": "top left", "size": "small", "color": "red", "shape": "circle"}],
        "blue",
    )
    assert dataset.parse("a cyan star on the left") == ([{"position": "left", "color": "cyan", "shape": "star"}], None)
    assert dataset.parse("") == ([], None)
