"""A Hugging Face model folder (what vLLM and sentence-transformers load).

Reads only files inside the folder it is given: config.json, tokenizer
presence, safetensors headers (single or sharded with index), pickle policy.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import field
from pathlib import Path
from typing import Any

from .. import problems as P
from ..problems import Problem
from .jsonfile import CONFIG_LIMITS, read_json
from .hfconfig import check_config_values
from .modelcheck import ModelFacts, TensorMeta, check_model, text_config
from .tokenizerfiles import check_generation_config, check_tokenizer_config, check_tokenizer_json
from .pickle import check_by_content, classify, is_pickle_name
from ..record import record

INDEX_NAME = "model.safetensors.index.json"
TOKENIZER_SETS = (
    ("tokenizer.json",),
    ("tokenizer.model",),
    ("spiece.model",),
    ("sentencepiece.bpe.model",),
    ("vocab.json", "merges.txt"),
    ("vocab.txt",),
    ("tiktoken.model",),
    ("qwen.tiktoken",),
)
ADAPTER_WEIGHTS = ("adapter_model.safetensors",)


@record
class FolderInfo:
    format: str = "hf-dir"
    architecture: str | None = None
    model_type: str | None = None
    dtype: str | None = None
    context_length: int | None = None
    quantization: str | None = None
    weights: list[str] = field(default_factory=list)
    tensor_count: int = 0
    parameter_count: int = 0
    dtypes: Counter = field(default_factory=Counter)
    tokenizer: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None
    tensors: dict[str, tuple[str, list[int]]] = field(default_factory=dict)  # name -> (dtype, shape)
    model: ModelFacts | None = None  # what the model-level checks compared (None: no config to compare)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.is_error for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "architecture": self.architecture, "model_type": self.model_type,
            "dtype": self.dtype, "context_length": self.context_length, "quantization": self.quantization,
            "weights": self.weights, "tensor_count": self.tensor_count, "parameter_count": self.parameter_count,
            "dtypes": dict(self.dtypes), "tokenizer": self.tokenizer,
            "model": self.model.to_dict() if self.model is not None else None,
            "problems": [p.to_dict() for p in self.problems],
        }


def read_json_object(path: Path, name: str, code: str = P.CONFIG_INVALID) -> tuple[dict | None, Problem | None]:
    """A config-like JSON object (config.json, adapter_config.json) within `CONFIG_LIMITS`."""
    value, err = read_json(path, CONFIG_LIMITS)
    if err is not None:
        if err.kind == "missing":
            return None, P.error(name, P.CONFIG_MISSING if code == P.CONFIG_INVALID else code, f"{name} is missing")
        if err.kind == "unreadable":
            return None, P.error(name, P.UNREADABLE, f"{name}: {err.message}")
        if err.kind == "empty":
            return None, P.error(name, P.EMPTY_FILE if code == P.CONFIG_INVALID else code, f"{name} is empty")
        return None, P.error(name, code, f"{name} {err.message}")
    if not isinstance(value, dict):
        return None, P.error(name, code, f"{name} must be a JSON object, found {type(value).__name__}")
    return value, None


def describe_config(info: FolderInfo, config: dict[str, Any]) -> None:
    info.config = config
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        info.architecture = archs[0]
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    info.model_type = config.get("model_type") if isinstance(config.get("model_type"), str) else None
    dtype = config.get("torch_dtype") or config.get("dtype") or text.get("torch_dtype")
    info.dtype = dtype if isinstance(dtype, str) else None
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        if isinstance(text.get(key), int):
            info.context_length = text[key]
            break
    q = config.get("quantization_config")
    if isinstance(q, dict):
        method = q.get("quant_method") or q.get("quant_type") or "unknown"
        bits = q.get("bits") or q.get("w_bit")
        info.quantization = f"{method}" + (f" {bits}-bit" if bits else "")


def check_hf_dir(
    root: Path,
    files: list[str],
    *,
    serves_text: bool = True,
    allow_pickle: bool = False,
    require_config: bool = True,
    require_weights: bool = True,
    model_checks: bool = True,
) -> FolderInfo:
    """Validate a model folder given the relative paths of the files in it.

    With `model_checks`, config.json is compared with the tensors the loaders would
    read (see `modelcheck`): the index's shards, else model.safetensors, else the
    top-level .safetensors files."""
    from .safetensors import check_safetensors
    from .sharded import check_index, index_shard_names

    info = FolderInfo()
    present = set(files)
    config = None
    if "config.json" in present or require_config:
        config, problem = read_json_object(root / "config.json", "config.json")
        if problem:
            info.problems.append(problem)
        if config is not None:
            describe_config(info, config)
            q = config.get("quantization_config")
            if q is not None and not isinstance(q, dict):
                info.problems.append(P.error("config.json", P.CONFIG_INVALID, f"config.json: quantization_config must be an object, found {type(q).__name__}"))

    if serves_text:
        for names in TOKENIZER_SETS:
            if all(n in present for n in names):
                info.tokenizer = list(names)
                break
        else:
            info.problems.append(P.error(
                "tokenizer.json", P.TOKENIZER_MISSING,
                "no tokenizer (tokenizer.json, tokenizer.model, vocab.json+merges.txt or vocab.txt); "
                "set `serves_text: false` on lanes that serve no text",
            ))

    if model_checks:  # before the weights: a large tokenizer's parse and a large index do not add up in memory
        for rel, check in (("tokenizer.json", check_tokenizer_json), ("tokenizer_config.json", check_tokenizer_config),
                           ("generation_config.json", check_generation_config)):
            if rel in present:
                info.problems.extend(check(root / rel))

    checked: set[str] = set()
    top_level = [f for f in files if "/" not in f]
    model_tensors: dict[str, TensorMeta] = {}
    if INDEX_NAME in present:
        shard_names, index_problem = index_shard_names(root / INDEX_NAME)
        if index_problem is not None:
            info.problems.append(index_problem)
        shards = {}
        for shard in shard_names:
            shards[shard] = _safetensors(info, root, shard, check_safetensors) if shard in present else None
            checked.add(shard)
        if index_problem is None:
            index = check_index(root / INDEX_NAME, shards, name=INDEX_NAME)
            info.problems.extend(index.problems)
            model_tensors = dict.fromkeys(index.weight_map)
            for st in shards.values():
                if st is not None:
                    model_tensors.update((n, (t.dtype, t.shape)) for n, t in st.tensors.items() if n in model_tensors)
        info.weights.append(INDEX_NAME)
    loose: dict[str, Any] = {}
    for rel in files:
        if rel.endswith(".safetensors") and rel not in checked:
            st = _safetensors(info, root, rel, check_safetensors)
            if rel in top_level and rel not in ADAPTER_WEIGHTS:  # adapter weights are validated, not counted as the model's
                info.weights.append(rel)
                loose[rel] = st
    if INDEX_NAME not in present:
        # transformers reads model.safetensors; without it, vLLM reads every top-level file
        for st in [loose["model.safetensors"]] if "model.safetensors" in loose else loose.values():
            model_tensors.update((n, (t.dtype, t.shape)) for n, t in st.tensors.items())
    if model_checks and isinstance(config, dict):
        info.problems.extend(check_config_values(config, info.architecture))
        info.model, found = check_model(config, model_tensors)
        info.problems.extend(found)
    # A .bin/.pt is judged by what it holds (pickle, torch archive, safetensors, plain
    # data), not by its name: plain bytes named .bin are no pickle to refuse.
    for rel in files:
        if not is_pickle_name(rel) or rel.endswith("training_args.bin"):
            continue
        found = check_by_content(root / rel, rel, allow_pickle)
        info.problems.extend(found)
        if allow_pickle and "/" not in rel and not any(p.is_error for p in found) and _holds_pickles(root / rel):
            info.weights.append(rel)
    if require_weights and not info.weights and not any(f.endswith(".gguf") for f in files):
        info.problems.append(P.error(".", P.WEIGHTS_MISSING, "no weights: expected model.safetensors, a sharded index with its shards, or (with allow_pickle) a .bin/.pt file"))
    return info


def _holds_pickles(path: Path) -> bool:
    try:
        return classify(path).pickled
    except OSError:
        return False


def infer_serves_text(config: dict[str, Any] | None, files: list[str]) -> tuple[bool, str]:
    """Whether a folder holds a text model (so needs a tokenizer), and why we think so.

    `inspect` has no lane to say `serves_text`; a voice-activity detector or a
    time-series model with its own config.json needs no tokenizer. A folder is taken
    for a text model when its config names a tokenizer class, has a vocabulary size
    (in its text config for multimodal models), or its architecture is a language
    model head; a tokenizer file present settles it too."""
    if any(all(n in files for n in names) for names in TOKENIZER_SETS):
        return True, "a tokenizer is present"
    if not isinstance(config, dict):
        return False, "no config.json"
    text = text_config(config)
    if isinstance(config.get("tokenizer_class"), str) or isinstance(text.get("tokenizer_class"), str):
        return True, "config.json names a tokenizer class"
    if any(isinstance(text.get(k), int) for k in ("vocab_size", "n_vocab", "padded_vocab_size")):
        return True, "config.json has a vocabulary size"
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    if arch and arch.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "ForSeq2SeqLM", "ForMaskedLM")):
        return True, f"architecture {arch} is a language model"
    return False, "config.json has no vocabulary, tokenizer class or language-model architecture"


def _safetensors(info: FolderInfo, root: Path, rel: str, check) -> Any:
    st = check(root / rel, name=rel)
    info.problems.extend(st.problems)
    info.tensor_count += len(st.tensors)
    info.parameter_count += st.parameter_count
    info.dtypes.update(st.dtypes)
    for tname, t in st.tensors.items():
        info.tensors[tname] = (t.dtype, list(t.shape))
    return st
