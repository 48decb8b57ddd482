"""Tiny stand-ins for the models the shipped examples name: same file names, same formats."""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

from tests import repos
from tests.builders import write_safetensors

BERT_CONFIG = {
    "architectures": ["BertModel"], "model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1,
    "num_attention_heads": 1, "intermediate_size": 16, "vocab_size": 32, "max_position_embeddings": 512, "torch_dtype": "float32",
}
XLMR_CONFIG = {**BERT_CONFIG, "architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta", "max_position_embeddings": 8194}
AWQ_CONFIG = {
    **repos.LLAMA_CONFIG, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "torch_dtype": "float16",
    "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm", "zero_point": True},
}


def llama_like(*, sharded: bool = True, config: dict | None = None) -> dict[str, bytes]:
    return repos.hf_model(sharded=sharded, config=config)


def _encoder_weights(config: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor BertModel builds from `config` (the pooler included)."""
    from tests.st_layouts import encoder as encoder_layout

    hidden = config["hidden_size"]
    t = encoder_layout(layers=config["num_hidden_layers"], vocab=config["vocab_size"], hidden=hidden,
                       inner=config["intermediate_size"], positions=config["max_position_embeddings"])
    t["pooler.dense.weight"] = ("F32", (hidden, hidden))
    t["pooler.dense.bias"] = ("F32", (hidden,))
    return t


def encoder(config: dict, *, extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """A BERT-style encoder folder (bge-m3, the reranker, MiniLM): config, tokenizer, model.safetensors."""
    with tempfile.TemporaryDirectory() as d:
        write_safetensors(Path(d) / "model.safetensors", _encoder_weights(config), metadata={"format": "pt"})
        weights = (Path(d) / "model.safetensors").read_bytes()
    files = {
        "config.json": json.dumps(config).encode(),
        "tokenizer.json": json.dumps(repos.TOKENIZER).encode(),
        "tokenizer_config.json": b'{"model_max_length": 512}',
        "special_tokens_map.json": b'{"cls_token": "[CLS]"}',
        "model.safetensors": weights,
    }
    files.update(extra or {})
    return files


def sentence_transformer() -> dict[str, bytes]:
    """The sentence-transformers layout of all-MiniLM-L6-v2."""
    return encoder(BERT_CONFIG, extra={
        "modules.json": json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]).encode(),
        "config_sentence_transformers.json": b'{"__version__": {"sentence_transformers": "2.0.0"}}',
        "sentence_bert_config.json": b'{"max_seq_length": 256, "do_lower_case": false}',
        "1_Pooling/config.json": b'{"word_embedding_dimension": 8, "pooling_mode_mean_tokens": true}',
        "vocab.txt": "\n".join(f"t{i}" for i in range(32)).encode(),
    })


def torch_zip_checkpoint(name: str, state: dict) -> bytes:
    """What torch.save writes (a zip holding `<name>/data.pkl`), made without torch: plain containers only."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}/data.pkl", pickle.dumps(collections.OrderedDict(state), protocol=4))
        z.writestr(f"{name}/byteorder", "little")
        z.writestr(f"{name}/version", "3\n")
    return buf.getvalue()


def clip_checkpoint() -> bytes:
    """OpenAI's ViT-B-32.pt is a TorchScript archive (code/ plus constants.pkl and data.pkl)."""
    from tests.pickle_builders import torchscript_archive

    return torchscript_archive()


def whisper_checkpoint() -> bytes:
    """openai-whisper's small.pt: torch.save of {"dims": ..., "model_state_dict": ...} (a torch zip)."""
    from tests.pickle_builders import whisper_small

    return whisper_small()


class _RunsShell:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def malicious_checkpoint() -> bytes:
    return pickle.dumps({"dims": {"n_mels": 80}, "model_state_dict": _RunsShell()}, protocol=4)


def gguf_q4_k_m(name: str) -> bytes:
    """A GGUF file with Q4_K weights, as a *Q4_K_M.gguf name promises."""
    return repos.gguf_file(name, quant="Q4_K", extra_kv={"general.name": name.removesuffix(".gguf")})[name]


def distinct(files: dict[str, bytes], repo: str) -> dict[str, bytes]:
    """Make every file of a stand-in differ from other stand-ins (real repos rarely share bytes)."""
    out = {}
    for rel, data in files.items():
        if rel.endswith(".json") and not rel.endswith(".index.json"):
            out[rel] = json.dumps({**json.loads(data), "_name_or_path": repo}).encode()
        elif rel.endswith(".safetensors"):
            out[rel] = _retag(data, repo)
        else:
            out[rel] = data
    return out


def _retag(data: bytes, repo: str) -> bytes:
    """The same safetensors file with the repo named in its header metadata."""
    import struct

    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    header.setdefault("__metadata__", {})["source"] = repo
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]
