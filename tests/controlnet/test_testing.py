"""controlnet.testing's tokenizer: byte-level without words, one token per given word with them."""

from __future__ import annotations

from pathlib import Path


def test_tokenizer_makes_each_given_word_one_token(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    from controlnet.testing import write_tokenizer

    words = ["a", "red", "green", "circle", "on", "background", "greenery"]
    size = write_tokenizer(tmp_path / "words", words, max_length=16)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "words")
    assert len(tokenizer) == size and tokenizer.model_max_length == 16
    assert tokenizer.tokenize("a red circle on a green background") == [
        "a</w>", "red</w>", "circle</w>", "on</w>", "a</w>", "green</w>", "background</w>"
    ]
    assert tokenizer.tokenize("greenery") == ["greenery</w>"]
    assert len(tokenizer.tokenize("reed")) > 1  # other words are still spelled out
    plain = write_tokenizer(tmp_path / "bytes")
    assert CLIPTokenizer.from_pretrained(tmp_path / "bytes").tokenize("red") == ["r", "e", "d</w>"]
    assert plain == 2 * 256 + 2
