"""The tokenizer and generation files of a model folder, as the loaders read them.

- `tokenizer.json`: what the `tokenizers` library (Rust, 0.19-0.23: `Tokenizer::from_file`,
  which transformers' fast tokenizers and vLLM call) refuses: not JSON or cut short, a
  `version` other than "1.0", no `model`, a `model.type` other than BPE, WordPiece,
  WordLevel or Unigram, a vocabulary of the wrong shape for its type (BPE/WordPiece/
  WordLevel: token -> id; Unigram: [piece, score] pairs and an `unk_id` inside them), a BPE
  merge ("a b" or ["a", "b"]) whose pieces or whose merged token are not in the vocabulary
  (`MergeTokenOutOfVocabulary`), a legacy merge line that does not split into two pieces
  (`BadMerges`), an added token without an integer `id` or a string `content`.
- `tokenizer_config.json`: must be a JSON object (AutoTokenizer reads it with json.load and
  calls `.get` on it); its `tokenizer_class` must name a class AutoTokenizer resolves
  (`hf_tables.TOKENIZER_CLASSES`; transformers 4.x raises "Tokenizer class X does not exist or
  is not currently imported", 5.x falls back to its generic backend), unless an `auto_map`
  brings its own class.
- `generation_config.json`: transformers (`GenerationConfig.from_pretrained`) and vLLM
  (`try_get_generation_config`) turn a file that is not JSON into an OSError and fall back to
  the model config (a warning here: the defaults it held are lost); a JSON value that is not an
  object raises a TypeError that nothing catches (an error).

The `tokenizers` library itself is not used: its wheel would be a runtime dependency of
several MB for rules this module states in a page, and the checks read the same JSON the
library reads, within the bounds below (the campaign in tests/st_campaign.py compares the
verdicts with the library's own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import problems as P
from ..problems import Problem
from .hf_tables import TOKENIZER_CLASSES
from .jsonfile import CONFIG_LIMITS, Limits, read_json

# tokenizer.json: the largest real ones (Gemma 3, 262k tokens) are about 33 MB.
TOKENIZER_LIMITS = Limits(max_bytes=64 * 2**20, max_items=6_000_000)
MODEL_TYPES = ("BPE", "WordPiece", "WordLevel", "Unigram")
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"


def check_tokenizer_json(path: Path, name: str = TOKENIZER) -> list[Problem]:
    doc, err = read_json(path, TOKENIZER_LIMITS)
    if err is not None:
        if err.kind == "missing":
            return []
        code = P.UNREADABLE if err.kind == "unreadable" else P.TOKENIZER_INVALID
        return [P.error(name, code, f"{name} {err.message} (the tokenizers library cannot load it)")]
    return [P.error(name, P.TOKENIZER_INVALID, f"{name}: {why} (the tokenizers library refuses it)") for why in tokenizer_defects(doc)]


def tokenizer_defects(doc: Any) -> list[str]:
    """Why `Tokenizer.from_str` refuses this parsed tokenizer.json (empty: it loads)."""
    if not isinstance(doc, dict):
        return [f"is a JSON {type(doc).__name__}, expected an object"]
    out: list[str] = []
    version = doc.get("version")
    if "version" in doc and version != "1.0":
        out.append(f"version is {version!r}, the library reads only \"1.0\"")
    model = doc.get("model")
    if not isinstance(model, dict):
        out.append("has no model object" if model is None else f"model is a JSON {type(model).__name__}, expected an object")
    else:
        out += _model_defects(model)
    added = doc.get("added_tokens", [])
    if added is not None and not isinstance(added, list):
        out.append(f"added_tokens is a JSON {type(added).__name__}, expected a list")
    elif added:
        for k, t in enumerate(added):
            if not isinstance(t, dict):
                out.append(f"added_tokens[{k}] is not an object")
                break
            tid, content = t.get("id"), t.get("content")
            if type(tid) is not int or not 0 <= tid < 2**32:
                out.append(f"added_tokens[{k}] has id {tid!r}, expected an unsigned integer")
                break
            if not isinstance(content, str):
                out.append(f"added_tokens[{k}] has content {content!r}, expected a string")
                break
            bad = next((f for f in ("single_word", "lstrip", "rstrip", "normalized", "special")
                        if f in t and not isinstance(t[f], bool)), None)
            if bad:
                out.append(f"added_tokens[{k}].{bad} is {t[bad]!r}, expected true or false")
                break
    return out


def _model_defects(model: dict) -> list[str]:
    kind = model.get("type")
    if kind is not None and kind not in MODEL_TYPES:
        return [f"model.type is {kind!r}; the library knows {', '.join(MODEL_TYPES)}"]
    vocab = model.get("vocab")
    if kind is None:  # untagged: the library tries each type in turn
        kind = "Unigram" if isinstance(vocab, list) else "BPE" if "merges" in model else "WordPiece"
    if kind == "Unigram":
        return _unigram(model, vocab)
    if not isinstance(vocab, dict):
        return [f"model.vocab of a {kind} model is a JSON {type(vocab).__name__}, expected an object of token -> id"]
    bad = next((t for t, i in vocab.items() if type(i) is not int or not 0 <= i < 2**32), None)
    if bad is not None:
        return [f"model.vocab[{bad!r}] is {vocab[bad]!r}, expected a token id (an unsigned integer)"]
    if kind == "BPE":
        return _merges(model, vocab)
    return []


def _unigram(model: dict, vocab: Any) -> list[str]:
    if not isinstance(vocab, list):
        return [f"model.vocab of a Unigram model is a JSON {type(vocab).__name__}, expected a list of [piece, score]"]
    for k, item in enumerate(vocab):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], (int, float)) and not isinstance(item[1], bool)):
            return [f"model.vocab[{k}] is {str(item)[:60]}, expected [piece, score]"]
    unk = model.get("unk_id")
    if unk is not None:
        if type(unk) is not int or unk < 0:
            return [f"model.unk_id is {unk!r}, expected a vocabulary index"]
        if not vocab:
            return ["model.vocab is empty (EmptyVocabulary)"]
        if unk >= len(vocab):
            return [f"model.unk_id is {unk}, beyond the {len(vocab)} pieces of the vocabulary (UnkIdNotInVocabulary)"]
    return []


def _merges(model: dict, vocab: dict) -> list[str]:
    merges = model.get("merges")
    if merges is None:
        return ["a BPE model without merges (\"Missing vocab/merges\")"]
    if not isinstance(merges, list):
        return [f"model.merges is a JSON {type(merges).__name__}, expected a list"]
    prefix = model.get("continuing_subword_prefix") or ""
    if not isinstance(prefix, str):
        prefix = ""
    rank = 0
    for m in merges:
        if isinstance(m, str):
            if m.startswith("#version"):
                continue
            rank += 1
            parts = m.split(" ")
            if len(parts) != 2:
                return [f"merge {rank} ({m[:60]!r}) does not split into two pieces at one space (BadMerges)"]
            a, b = parts
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m):
            rank += 1
            a, b = m
        else:
            return [f"model.merges holds {str(m)[:60]}, expected \"a b\" or [\"a\", \"b\"]"]
        for piece in (a, b, a + b[len(prefix):]):
            if piece not in vocab:
                return [f"merge {rank} ({a!r}, {b!r}) needs {piece!r}, which is not in model.vocab (MergeTokenOutOfVocabulary)"]
    return []


def check_tokenizer_config(path: Path, name: str = TOKENIZER_CONFIG) -> list[Problem]:
    doc, err = read_json(path, CONFIG_LIMITS)
    if err is not None:
        if err.kind == "missing":
            return []
        code = P.UNREADABLE if err.kind == "unreadable" else P.TOKENIZER_CONFIG_INVALID
        return [P.error(name, code, f"{name} {err.message} (AutoTokenizer reads it with json.load and fails)")]
    if not isinstance(doc, dict):
        return [P.error(name, P.TOKENIZER_CONFIG_INVALID, f"{name} is a JSON {type(doc).__name__}, expected an object (AutoTokenizer fails on it)")]
    cls = doc.get("tokenizer_class")
    if cls is None or doc.get("auto_map") is not None:
        return []
    if not isinstance(cls, str):
        return [P.error(name, P.TOKENIZER_CONFIG_INVALID, f"{name}: tokenizer_class is {cls!r}, expected a class name")]
    if cls not in TOKENIZER_CLASSES and cls + "Fast" not in TOKENIZER_CLASSES:
        return [P.error(name, P.UNKNOWN_TOKENIZER_CLASS,
                        f"{name}: tokenizer_class {cls!r} is no tokenizer class transformers knows (4.x: \"Tokenizer class "
                        f"{cls} does not exist\"); use the class the model was saved with (e.g. PreTrainedTokenizerFast) "
                        "or add an auto_map")]
    return []


def check_generation_config(path: Path, name: str = GENERATION_CONFIG) -> list[Problem]:
    doc, err = read_json(path, CONFIG_LIMITS)
    if err is not None:
        if err.kind == "missing":
            return []
        if err.kind == "unreadable":
            return [P.error(name, P.UNREADABLE, f"{name} {err.message}")]
        return [P.warning(name, P.GENERATION_CONFIG_INVALID,
                          f"{name} {err.message}: transformers and vLLM ignore it and use defaults from config.json")]
    if not isinstance(doc, dict):
        return [P.error(name, P.GENERATION_CONFIG_INVALID,
                        f"{name} is a JSON {type(doc).__name__}, expected an object (GenerationConfig fails on it with a TypeError "
                        "that transformers and vLLM do not catch)")]
    return []
