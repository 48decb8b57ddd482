"""The C++ reader behind ops/gen-gguf-arch.py on the constructs llama.cpp's loaders use."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ops"))

import gguf_cxx as C  # noqa: E402


def test_statements_and_expressions() -> None:
    body = C.parse_body("""
        LLAMA_LOAD_LOCALS;
        const int64_t n_ff_exp = hparams.n_ff_exp() ? hparams.n_ff_exp() : n_ff / n_expert_used;
        for (int i = 0; i < n_layer; ++i) {
            auto & layer = layers[i];
            if (n_expert == 0) {
                layer.ffn_up = create_tensor(tn(LLM_TENSOR_FFN_UP, "weight", i), {n_embd, 2 * n_ff}, 0);
            } else {
                throw std::runtime_error(format("bad %d", i));
            }
        }
        auto [Qcur, Kcur, Vcur] = build_qkv(model.layers[il], cur, n_embd_head, n_head, n_head_kv, il);
        auto load_block = [&](int il, int flags) { create_tensor_qkv(layers[il], il, n_embd, n_embd, n_embd, n_embd, flags); };
        GGML_ASSERT(n_embd_head == (int64_t) hparams.n_embd_head_k());
        switch (hparams.n_layer()) { case 24: type = LLM_TYPE_1B; break; default: type = LLM_TYPE_UNKNOWN; }
    """)
    kinds = [s[0] for s in body[1]]
    assert kinds == ["expr", "decl", "for", "bind", "decl", "assert", "switch"], kinds
    decl = body[1][1]
    assert decl[:3] == ("decl", "n_ff_exp", "int64_t") and decl[3][0] == "cond"
    loop = body[1][2]
    branch = loop[4][1][1]
    assert branch[0] == "if" and branch[3][1][0] == ("throw", ("call", "format", (("s", "bad %d"), ("id", "i"))))
    create = branch[2][1][0][1][3]
    assert create[0] == "call" and create[1] == "create_tensor" and create[2][1] == ("list", (("id", "n_embd"), ("bin", "*", ("n", 2), ("id", "n_ff"))))
    assert body[1][3][1] == ("Qcur", "Kcur", "Vcur")
    assert body[1][4][3][0] == "lambda" and [n for _, n in body[1][4][3][1]] == ["il", "flags"]
    assert body[1][5][1][3] == ("cast", "int64_t", ("method", ("id", "hparams"), "n_embd_head_k", ()))


def test_what_it_cannot_read_is_opaque_with_the_names_it_mentions() -> None:
    body = C.parse_body("for (const auto val : hparams.deepstack_mapping_arr) { if (val >= 0) { idxs.insert(val); } } x = 1;")
    opaque = body[1][0]
    assert opaque[0] == "opaque" and "deepstack_mapping_arr" in opaque[2] and body[1][1][0] == "expr"


def test_function_definitions_are_found_with_their_class() -> None:
    src = """
    void llama_model_x::load_arch_tensors(llama_model_loader &) {
        LLAMA_LOAD_LOCALS;
    }
    template <bool embed>
    llama_model_x::graph<embed>::graph(const llama_model & model, const llm_graph_params & params) : llm_graph_context(params) {
        GGML_ASSERT(n_rot > 0);
    }
    std::unique_ptr<llm_graph_context> llama_model_x::build_arch_graph(const llm_graph_params & params) const {
        return nullptr;
    }
    """
    found = {name: (params, init) for name, params, init, _ in C.function_bodies(src)}
    assert set(found) == {"llama_model_x::load_arch_tensors", "llama_model_x::graph<embed>::graph", "llama_model_x::build_arch_graph"}
    assert found["llama_model_x::graph<embed>::graph"][1] == "llm_graph_context ( params )"
