"""CLIP tokenizer folders: a small tokenizer trained offline on captions, and reading either file format.

No CLIP vocabulary can be downloaded here, so small models own their tokenizer: a BPE
trained with `tokenizers` on their captions and written as `vocab.json` + `merges.txt` in
the order `CLIPTokenizer` expects (byte symbols, byte symbols + `</w>`, merges, specials).

transformers 4's `CLIPTokenizer` reads only `vocab.json` + `merges.txt`; transformers 5 saves only
`tokenizer.json`. Folders this project writes hold both (`add_clip_vocab_files`), and the readers
here take either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Tuple, Type, Union

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

END_OF_WORD = "</w>"
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
MAX_LENGTH = 77  # SD1.5's text length: ComfyUI's SD1 tokenizer and CLIP position embeddings assume it
VOCAB_FILES = ("vocab.json", "merges.txt")
TOKENIZER_JSON = "tokenizer.json"
EXPECTED_FILES = "vocab.json and merges.txt (transformers 4) or tokenizer.json (transformers 5)"

Merges = List[Tuple[str, str]]

if TYPE_CHECKING:  # imported where used: training/config.py checks folders without loading transformers
    import transformers


class TokenizerFolderError(ValueError):
    """A folder that holds no CLIP tokenizer in either format; the message names the files expected."""


def byte_alphabet() -> List[str]:
    """The 256 byte symbols of byte-level BPE in GPT-2/CLIP's `bytes_to_unicode` order: printable
    Latin-1 bytes map to themselves and the rest to 256 + n, so sorting by code point gives that order."""
    return sorted(pre_tokenizers.ByteLevel.alphabet())


def train_clip_tokenizer(
    texts: Iterable[str], out_dir: Union[str, os.PathLike], vocab_size: int = 1024
) -> transformers.PreTrainedTokenizerBase:
    """Train a BPE on `texts` and save it in CLIP's format in `out_dir`; returns the loaded tokenizer."""
    alphabet = byte_alphabet()
    base_size = 2 * len(alphabet) + 2
    if vocab_size <= base_size:
        raise ValueError(
            f"vocab_size must exceed {base_size} (byte symbols with and without {END_OF_WORD}, 2 specials)"
        )
    bpe = Tokenizer(BPE(end_of_word_suffix=END_OF_WORD))
    # CLIP lower-cases and splits words from punctuation before BPE.
    bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = BpeTrainer(
        vocab_size=vocab_size - 2, initial_alphabet=alphabet, end_of_word_suffix=END_OF_WORD, show_progress=False
    )
    bpe.train_from_iterator((t.lower() for t in texts), trainer=trainer)
    merges = _merge_pairs(json.loads(bpe.to_str())["model"]["merges"])

    vocab: List[str] = alphabet + [a + END_OF_WORD for a in alphabet]
    seen = set(vocab)
    for left, right in merges:
        if left + right not in seen:
            vocab.append(left + right)
            seen.add(left + right)
    vocab += [START_TOKEN, END_TOKEN]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_vocab_files(out, {tok: i for i, tok in enumerate(vocab)}, merges)
    import transformers

    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(out), pad_token=END_TOKEN, model_max_length=MAX_LENGTH)
    tokenizer.save_pretrained(str(out))
    return tokenizer


def read_clip_vocab(folder: Union[str, os.PathLike]) -> Tuple[Dict[str, int], Merges]:
    """`(vocab, merges)` of a CLIP tokenizer folder in either format (vocab.json + merges.txt preferred)."""
    folder = Path(folder)
    if all((folder / name).is_file() for name in VOCAB_FILES):
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        return vocab, _merge_pairs(line for line in lines if line and not line.startswith("#version"))
    if not (folder / TOKENIZER_JSON).is_file():
        raise TokenizerFolderError(f"{folder}: no CLIP tokenizer; expected {EXPECTED_FILES}")
    spec = json.loads((folder / TOKENIZER_JSON).read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or "vocab" not in model:
        raise TokenizerFolderError(
            f"{folder / TOKENIZER_JSON}: model type {model.get('type')!r}; a CLIP tokenizer is a BPE"
        )
    vocab = dict(model["vocab"])
    vocab.update({token["content"]: token["id"] for token in spec.get("added_tokens", [])})
    return vocab, _merge_pairs(model.get("merges", []))


def clip_tokenizer_class(folder: Union[str, os.PathLike]) -> Type[transformers.PreTrainedTokenizerBase]:
    """The transformers class that reads this folder under transformers 4 and 5: `CLIPTokenizer` for
    vocab.json + merges.txt (as ComfyUI uses), the fast class for tokenizer.json only (transformers 4's
    `CLIPTokenizer` cannot read it; in transformers 5 both names are one class)."""
    import transformers

    folder = Path(folder)
    if all((folder / name).is_file() for name in VOCAB_FILES):
        return transformers.CLIPTokenizer
    if (folder / TOKENIZER_JSON).is_file():
        return transformers.CLIPTokenizerFast
    raise TokenizerFolderError(f"{folder}: no CLIP tokenizer; expected {EXPECTED_FILES}")


def has_clip_tokenizer(folder: Union[str, os.PathLike]) -> bool:
    """Whether the folder holds a CLIP tokenizer in either format."""
    folder = Path(folder)
    return all((folder / name).is_file() for name in VOCAB_FILES) or (folder / TOKENIZER_JSON).is_file()


def load_clip_tokenizer(folder: Union[str, os.PathLike]) -> transformers.PreTrainedTokenizerBase:
    """A CLIP tokenizer folder in either format, under transformers 4 or 5."""
    return clip_tokenizer_class(folder).from_pretrained(str(folder))


def add_clip_vocab_files(folder: Union[str, os.PathLike]) -> None:
    """Write vocab.json + merges.txt from tokenizer.json where a folder has only the latter, so that
    transformers 4 reads what transformers 5 saved. A folder that has either file is left as it is."""
    folder = Path(folder)
    if any((folder / name).exists() for name in VOCAB_FILES):
        return
    _write_vocab_files(folder, *read_clip_vocab(folder))


def special_token_ids(tokenizer: transformers.PreTrainedTokenizerBase) -> Dict[str, int]:
    """The tokenizer's special-token ids under the names a text-encoder config gives them
    (transformers 5 rejects a config whose ids lie outside the vocabulary)."""
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _write_vocab_files(folder: Path, vocab: Dict[str, int], merges: Merges) -> None:
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")


def _merge_pairs(merges: Iterable[Union[str, List[str]]]) -> Merges:
    # `tokenizers` writes merges as "a b" strings or [a, b] pairs depending on its version.
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
