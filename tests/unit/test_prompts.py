"""System prompts and prompt formatting, against the texts of Lumina-Image 2.0 `sample.py`."""

import pytest

from lumina_core.text import SYSTEM_PROMPTS, format_negative_prompt, format_prompt

# Verbatim from Alpha-VLLM/Lumina-Image-2.0 sample.py --system_type.
SAMPLE_PY_TEXTS = {
    "real": "You are an assistant designed to generate superior images with the superior degree of image-text "
    "alignment based on textual prompts or user prompts.",
    "align": "You are an assistant designed to generate high-quality images with the highest degree of image-text "
    "alignment based on textual prompts.",
    "base": "You are an assistant designed to generate high-quality images based on user prompts.",
    "aesthetics": "You are an assistant designed to generate high-quality images with highest degree of aesthetics "
    "based on user prompts.",
    "4grid": "You are an assistant designed to generate four high-quality images with highest degree of aesthetics "
    "arranged in 2x2 grids based on user prompts.",
    "empty": "",
}


def test_the_six_presets_are_verbatim():
    assert SYSTEM_PROMPTS == SAMPLE_PY_TEXTS


@pytest.mark.parametrize("name", [name for name in SAMPLE_PY_TEXTS if name != "empty"])
def test_preset_template_has_one_space_around_the_tag(name):
    assert format_prompt("a red fox", name) == f"{SAMPLE_PY_TEXTS[name]} <Prompt Start> a red fox"


def test_default_preset_is_real():
    assert format_prompt("a red fox") == format_prompt("a red fox", "real")


def test_empty_system_gives_the_prompt_alone():
    assert format_prompt("a red fox", "empty") == "a red fox"
    assert format_prompt("a red fox", "") == "a red fox"
    assert format_prompt("a red fox", "  ") == "a red fox"


def test_custom_system_text():
    assert format_prompt("a red fox", "Draw like Turner.") == "Draw like Turner. <Prompt Start> a red fox"


def test_empty_prompt_keeps_the_template():
    assert format_prompt("", "base") == f"{SAMPLE_PY_TEXTS['base']} <Prompt Start> "


def test_empty_negative_has_no_template():
    assert format_negative_prompt("", "real") == ""
    assert format_negative_prompt("", "Draw like Turner.") == ""


def test_non_empty_negative_is_formatted_like_a_positive():
    for system in ("real", "4grid", "empty", "Draw like Turner."):
        assert format_negative_prompt("blurry", system) == format_prompt("blurry", system)
