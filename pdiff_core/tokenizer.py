"""A small tokenizer in the CLIP tokenizer's file format, trained offline on captions.

No CLIP vocabulary can be downloaded here, so small models own their tokenizer: a BPE
trained with `tokenizers` on their captions and written as `vocab.json` + `merges.txt` in
the order `CLIPTokenizer` expects (byte symbols, byte symbols + `</w>`, merges, specials).
`CLIPTokenizer.from_pretrained(folder)` (transformers, ComfyUI) then reads it unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, List, Union

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import CLIPTokenizer
from transformers.models.clip.tokenization_clip import bytes_to_unicode

END_OF_WORD = "</w>"
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
MAX_LENGTH = 77  # SD1.5's text length: ComfyUI's SD1 tokenizer and CLIP position embeddings assume it


def train_clip_tokenizer(texts: Iterable[str], out_dir: Union[str, os.PathLike], vocab_size: int = 1024) -> CLIPTokenizer:
    """Train a BPE on `texts` and save it in CLIP's format in `out_dir`; returns the loaded tokenizer."""
    alphabet = list(bytes_to_unicode().values())
    base_size = 2 * len(alphabet) + 2
    if vocab_size <= base_size:
        raise ValueError(f"vocab_size must exceed {base_size} (byte symbols with and without {END_OF_WORD}, 2 specials)")
    bpe = Tokenizer(BPE(end_of_word_suffix=END_OF_WORD))
    # CLIP lower-cases and splits words from punctuation before BPE.
    bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = BpeTrainer(
        vocab_size=vocab_size - 2, initial_alphabet=alphabet, end_of_word_suffix=END_OF_WORD, show_progress=False
    )
    bpe.train_from_iterator((t.lower() for t in texts), trainer=trainer)
    merges = _merges_of(bpe)

    vocab: List[str] = alphabet + [a + END_OF_WORD for a in alphabet]
    seen = set(vocab)
    for left, right in merges:
        if left + right not in seen:
            vocab.append(left + right)
            seen.add(left + right)
    vocab += [START_TOKEN, END_TOKEN]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    tokenizer = CLIPTokenizer(
        str(out / "vocab.json"), str(out / "merges.txt"), pad_token=END_TOKEN, model_max_length=MAX_LENGTH
    )
    tokenizer.save_pretrained(str(out))
    return tokenizer


def _merges_of(bpe: Tokenizer) -> List[tuple]:
    merges = json.loads(bpe.to_str())["model"]["merges"]
    # `tokenizers` writes merges as "a b" strings or [a, b] pairs depending on its version.
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
