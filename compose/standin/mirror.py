"""Write a small model mirror for the stand-in stack: a vLLM-style folder and a GGUF file.

    python3 mirror.py DIR

DIR/tiny-llm/     config.json, tokenizer.json, tokenizer_config.json, model.safetensors
DIR/tiny.gguf     a llama GGUF (v3) with one F32 tensor

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

VOCAB = 32
HIDDEN = 16
GGUF_ALIGNMENT = 32


def _weights(n: int, seed: int) -> bytes:
    """n little-endian float32 values in [-1, 1), from a fixed linear congruential sequence."""
    state = seed
    out = bytearray()
    for _ in range(n):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        out += struct.pack("<f", state / 0x40000000 - 1.0)
    return bytes(out)


def safetensors_bytes(tensors: dict[str, tuple[list[int], bytes]]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (shape, data) in tensors.items():
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(data for _, data in tensors.values())


def _gguf_str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_bytes() -> bytes:
    """GGUF v3: header, key/values, tensor infos, padding to the alignment, tensor data."""
    kvs = [("general.architecture", 8, _gguf_str("llama")),
           ("general.name", 8, _gguf_str("tiny stand-in")),
           ("llama.block_count", 4, struct.pack("<I", 1)),
           ("llama.context_length", 4, struct.pack("<I", 128)),
           ("llama.embedding_length", 4, struct.pack("<I", HIDDEN))]
    data = _weights(VOCAB * HIDDEN, seed=2)
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, 1, len(kvs)))
    for key, kind, value in kvs:
        out += _gguf_str(key) + struct.pack("<I", kind) + value
    # GGUF lists dimensions fastest-varying first: [columns, rows]; type 0 is F32.
    out += _gguf_str("token_embd.weight") + struct.pack("<I", 2) + struct.pack("<QQ", HIDDEN, VOCAB)
    out += struct.pack("<IQ", 0, 0)
    out += b"\0" * (-len(out) % GGUF_ALIGNMENT)
    return bytes(out + data)


def files() -> dict[str, bytes]:
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
              "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": VOCAB, "torch_dtype": "float32"}
    tokenizer = {"version": "1.0", "model": {"type": "BPE", "vocab": {f"t{i}": i for i in range(VOCAB)}, "merges": []}}
    weights = safetensors_bytes({"lm_head.weight": ([VOCAB, HIDDEN], _weights(VOCAB * HIDDEN, seed=0)),
                                 "model.embed_tokens.weight": ([VOCAB, HIDDEN], _weights(VOCAB * HIDDEN, seed=1))})
    return {
        "tiny-llm/config.json": json.dumps(config, indent=2).encode(),
        "tiny-llm/tokenizer.json": json.dumps(tokenizer).encode(),
        "tiny-llm/tokenizer_config.json": json.dumps({"model_max_length": 128}).encode(),
        "tiny-llm/model.safetensors": weights,
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
