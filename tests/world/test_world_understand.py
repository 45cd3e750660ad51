"""Reading text back into the world (danceopd.world.understand): the parsers invert the generators exactly, and
words outside the world's vocabulary are found."""

import numpy as np

from danceopd.world import DEFAULT_WORLD, sample_example
from danceopd.world.understand import (
    known_words,
    parse_instruction,
    parse_prompt,
    scene_from_layout,
    unknown_words,
    vocabulary_line,
)


def test_every_generated_prompt_parses_to_its_constraints():
    rng = np.random.default_rng(0)
    for _ in range(400):
        ex = sample_example(rng, DEFAULT_WORLD, "t2i")
        assert parse_prompt(ex.prompt) == (ex.raw_task, ex.constraints), ex.prompt


def test_every_generated_instruction_parses_to_its_exact_target():
    rng = np.random.default_rng(1)
    for _ in range(300):
        ex = sample_example(rng, DEFAULT_WORLD, "edit")
        cat, target = parse_instruction(ex.prompt, ex.source)
        assert cat == ex.raw_task and target.layout() == ex.target.layout(), ex.prompt


def test_free_text():
    cat, c = parse_prompt("A red circle to the left of a blue star!")
    assert cat == "position_colored" and c["relation"]["rel"] == "left_of"
    assert [o["color"] for o in c["objects"]] == ["red", "blue"]
    assert parse_prompt("a photo of two stars on a gray background")[1]["background"] == "gray"
    assert parse_prompt("a lighthouse at dusk") is None
    src = scene_from_layout(("gray", None, (("circle", "red"),) + (None,) * 8))
    assert parse_instruction("make the background teal", src)[1].background == "teal"
    assert parse_instruction("remove the red circle", src)[1].objects == ()
    assert parse_instruction("remove the blue star", src) is None


def test_unknown_words():
    assert unknown_words("a pink hexagon and a pink star") == ["pink", "hexagon"]
    assert unknown_words("add a red circle in the top left corner") == []
    # words of the tokenizer that the default world never uses are unknown too
    assert {"pink", "cyan", "hexagon", "diamond", "beige", "five"}.isdisjoint(known_words())
    line = vocabulary_line()
    assert "shapes: circle, square, triangle, star" in line and "\n" not in line
