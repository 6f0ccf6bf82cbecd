"""CLIP tokenizer folders: the trained tokenizer, and both file formats (vocab.json + merges.txt from
transformers 4, tokenizer.json from transformers 5) read alike under whichever transformers runs."""

import json
import shutil

import pytest
import transformers

from conftest import CAPTIONS, keep_only_tokenizer_json
from pdiff_core.tokenizer import (
    TokenizerFolderError,
    add_clip_vocab_files,
    byte_alphabet,
    load_clip_tokenizer,
    read_clip_vocab,
)

# Words of the captions, words it never saw, punctuation, upper case and non-ASCII bytes (no CJK:
# transformers 4's slow and fast CLIP tokenizers split CJK words differently, whatever the files).
TEXTS = CAPTIONS + ["A Red SPHERE, beside... a zebra!", "naïve café — 42 cubes", ""]


def gpt2_bytes_to_unicode():
    """GPT-2's byte -> symbol table as its encoder.py defines it (printable bytes keep their code
    point, the others take 256, 257, ... in byte order), written out independently here."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def ids(tokenizer, texts=TEXTS):
    return [tokenizer(text)["input_ids"] for text in texts]


def test_byte_alphabet_is_clips_byte_table_in_its_order():
    assert byte_alphabet() == gpt2_bytes_to_unicode()


def test_trained_tokenizer_has_every_byte_and_the_two_specials_last(tiny_tokenizer_dir):
    vocab, merges = read_clip_vocab(tiny_tokenizer_dir)
    alphabet = gpt2_bytes_to_unicode()
    assert [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])][:512] == alphabet + [
        a + "</w>" for a in alphabet
    ]
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert vocab["<|startoftext|>"] == len(vocab) - 2 and vocab["<|endoftext|>"] == len(vocab) - 1
    assert all(a + b in vocab for a, b in merges)
    tokenizer = load_clip_tokenizer(tiny_tokenizer_dir)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        len(vocab) - 2,
        len(vocab) - 1,
        len(vocab) - 1,
    )
    assert tokenizer.model_max_length == 77


def test_both_formats_give_the_same_vocabulary_and_ids(tiny_tokenizer_dir, tmp_path):
    json_only = tmp_path / "json-only"
    shutil.copytree(tiny_tokenizer_dir, json_only)
    keep_only_tokenizer_json(json_only)
    assert read_clip_vocab(json_only) == read_clip_vocab(tiny_tokenizer_dir)
    expected = ids(transformers.CLIPTokenizer.from_pretrained(str(tiny_tokenizer_dir)))
    assert len({tuple(x) for x in expected}) == len(TEXTS)  # the texts do tell tokenizers apart
    assert ids(load_clip_tokenizer(json_only)) == expected
    # Written back as vocab.json + merges.txt, it reads with transformers' CLIPTokenizer alone
    # (under transformers 4 the class that ComfyUI uses, which cannot read tokenizer.json).
    add_clip_vocab_files(json_only)
    (json_only / "tokenizer.json").unlink()
    assert ids(transformers.CLIPTokenizer.from_pretrained(str(json_only))) == expected


def test_add_clip_vocab_files_keeps_a_folders_own_files(tiny_tokenizer_dir, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(tiny_tokenizer_dir, folder)
    keep_only_tokenizer_json(folder)
    (folder / "vocab.json").write_text(json.dumps({"mine": 0}))
    add_clip_vocab_files(folder)
    assert json.loads((folder / "vocab.json").read_text()) == {"mine": 0}
    assert not (folder / "merges.txt").exists()


def test_a_folder_without_a_tokenizer_names_both_formats(tiny_tokenizer_dir, tmp_path):
    with pytest.raises(TokenizerFolderError, match="vocab.json and merges.txt .* or tokenizer.json"):
        load_clip_tokenizer(tmp_path)
    half = tmp_path / "half"
    shutil.copytree(tiny_tokenizer_dir, half)
    (half / "merges.txt").unlink()
    (half / "tokenizer.json").unlink(missing_ok=True)
    with pytest.raises(TokenizerFolderError, match="merges.txt"):
        read_clip_vocab(half)


def test_a_tokenizer_json_of_another_model_type_is_refused(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {"a": 0}}}))
    with pytest.raises(TokenizerFolderError, match="WordPiece"):
        read_clip_vocab(tmp_path)
