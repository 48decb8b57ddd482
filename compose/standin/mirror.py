"""Write a small model mirror for the stand-in stack: a vLLM-style folder and a GGUF file.

    python3 mirror.py DIR

DIR/tiny-llm/     config.json, tokenizer.json, tokenizer_config.json, model.safetensors
DIR/tiny.gguf     the same one-block llama model as a GGUF (v3), with its vocabulary

Both are complete models the real loaders accept (every tensor the architecture needs,
F32, a byte-fallback vocabulary of 264 tokens); llama.cpp loads the GGUF and generates from it.

Standard library only (it runs in the bare base image). The bytes are the same on
every run, so compose/standin/manifest.yaml can pin their sha256. Files are written
beside their final name and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

HIDDEN = 16
HEADS = 2
FFN = 32
CONTEXT = 128
RMS_EPS = 1e-5
GGUF_ALIGNMENT = 32
# A SentencePiece vocabulary: unknown, begin, end, the 256 byte pieces (so any text
# tokenizes, by byte fallback), then a few words.
WORDS = ["\u2581", "\u2581hello", "\u2581world", "\u2581the", "\u2581a"]
TOKENS = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], *WORDS]
TOKEN_TYPES = [2, 3, 3, *[6] * 256, *[1] * len(WORDS)]  # unknown, control, control, byte, normal
VOCAB = len(TOKENS)

# One llama block. Shapes as PyTorch stores them ([out, in]); GGUF lists them reversed.
# (Hugging Face name, GGUF name, shape, filled with ones (a norm) or with weights)
TENSORS = [
    ("model.embed_tokens.weight", "token_embd.weight", (VOCAB, HIDDEN), False),
    ("model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight", (HIDDEN,), True),
    ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight", (HIDDEN, HIDDEN), False),
    ("model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight", (HIDDEN, HIDDEN), False),
    ("model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v.weight", (HIDDEN, HIDDEN), False),
    ("model.layers.0.self_attn.o_proj.weight", "blk.0.attn_output.weight", (HIDDEN, HIDDEN), False),
    ("model.layers.0.post_attention_layernorm.weight", "blk.0.ffn_norm.weight", (HIDDEN,), True),
    ("model.layers.0.mlp.gate_proj.weight", "blk.0.ffn_gate.weight", (FFN, HIDDEN), False),
    ("model.layers.0.mlp.up_proj.weight", "blk.0.ffn_up.weight", (FFN, HIDDEN), False),
    ("model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight", (HIDDEN, FFN), False),
    ("model.norm.weight", "output_norm.weight", (HIDDEN,), True),
    ("lm_head.weight", "output.weight", (VOCAB, HIDDEN), False),
]


def _weights(n: int, seed: int) -> bytes:
    """n little-endian float32 values in [-0.1, 0.1), from a fixed linear congruential sequence."""
    state = seed
    out = bytearray()
    for _ in range(n):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        out += struct.pack("<f", (state / 0x40000000 - 1.0) / 10)
    return bytes(out)


def _tensor_data() -> list[tuple[str, str, tuple[int, ...], bytes]]:
    out = []
    for seed, (hf_name, gguf_name, shape, ones) in enumerate(TENSORS):
        n = 1
        for d in shape:
            n *= d
        out.append((hf_name, gguf_name, shape, struct.pack(f"<{n}f", *[1.0] * n) if ones else _weights(n, seed)))
    return out


def safetensors_bytes() -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for hf_name, _g, shape, data in _tensor_data():
        header[hf_name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(data for *_, data in _tensor_data())


# GGUF value types
U32, I32, F32, BOOL, STR, ARR = 4, 5, 6, 7, 8, 9


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _value(kind: int, value: object) -> bytes:
    if kind == STR:
        return _str(str(value))
    if kind == BOOL:
        return struct.pack("<?", bool(value))
    return struct.pack({U32: "<I", I32: "<i", F32: "<f"}[kind], value)


def _kv(key: str, kind: int, value: object) -> bytes:
    return _str(key) + struct.pack("<I", kind) + _value(kind, value)


def _kv_array(key: str, kind: int, values: list) -> bytes:
    return _str(key) + struct.pack("<IIQ", ARR, kind, len(values)) + b"".join(_value(kind, v) for v in values)


def gguf_bytes() -> bytes:
    """GGUF v3 of the same model: header, key/values, tensor infos, aligned tensor data."""
    kvs = [
        _kv("general.architecture", STR, "llama"),
        _kv("general.name", STR, "tiny stand-in"),
        _kv("llama.context_length", U32, CONTEXT),
        _kv("llama.embedding_length", U32, HIDDEN),
        _kv("llama.block_count", U32, 1),
        _kv("llama.feed_forward_length", U32, FFN),
        _kv("llama.attention.head_count", U32, HEADS),
        _kv("llama.attention.head_count_kv", U32, HEADS),
        _kv("llama.rope.dimension_count", U32, HIDDEN // HEADS),
        _kv("llama.attention.layer_norm_rms_epsilon", F32, RMS_EPS),
        _kv("tokenizer.ggml.model", STR, "llama"),
        _kv_array("tokenizer.ggml.tokens", STR, TOKENS),
        _kv_array("tokenizer.ggml.scores", F32, [-float(i) for i in range(VOCAB)]),
        _kv_array("tokenizer.ggml.token_type", I32, TOKEN_TYPES),
        _kv("tokenizer.ggml.unknown_token_id", U32, 0),
        _kv("tokenizer.ggml.bos_token_id", U32, 1),
        _kv("tokenizer.ggml.eos_token_id", U32, 2),
    ]
    tensors = _tensor_data()
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs))
    offset = 0
    data = bytearray()
    for _h, gguf_name, shape, raw in tensors:
        out += _str(gguf_name) + struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *reversed(shape))
        out += struct.pack("<IQ", 0, offset)  # type 0: F32
        data += raw + b"\0" * (-len(raw) % GGUF_ALIGNMENT)
        offset = len(data)
    out += b"\0" * (-len(out) % GGUF_ALIGNMENT)
    return bytes(out + data)


def files() -> dict[str, bytes]:
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
              "intermediate_size": FFN, "num_hidden_layers": 1, "num_attention_heads": HEADS,
              "num_key_value_heads": HEADS, "vocab_size": VOCAB, "max_position_embeddings": CONTEXT,
              "rms_norm_eps": RMS_EPS, "tie_word_embeddings": False, "torch_dtype": "float32",
              "bos_token_id": 1, "eos_token_id": 2}
    tokenizer = {"version": "1.0", "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(TOKENS)}, "merges": [],
                                             "unk_token": "<unk>", "byte_fallback": True}}
    return {
        "tiny-llm/config.json": json.dumps(config, indent=2).encode(),
        "tiny-llm/tokenizer.json": json.dumps(tokenizer, ensure_ascii=False).encode(),
        "tiny-llm/tokenizer_config.json": json.dumps({"model_max_length": CONTEXT, "bos_token": "<s>",
                                                      "eos_token": "</s>", "unk_token": "<unk>"}).encode(),
        "tiny-llm/model.safetensors": safetensors_bytes(),
        "tiny.gguf": gguf_bytes(),
    }


def write(root: Path) -> list[Path]:
    written = []
    for rel, data in files().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.chmod(0o644)
        os.replace(tmp, path)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    root = Path(argv[0])
    for path in write(root):
        print(f"mirror: wrote {path} ({path.stat().st_size} bytes)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
