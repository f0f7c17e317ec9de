"""Tiny random configs of every architecture the project supports (built in code, no download)."""

from __future__ import annotations

import torch

COMMON = dict(
    vocab_size=300,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
    tie_word_embeddings=False,
)

#: model_type -> (adapter name, config kwargs); 4 layers (Nemotron-H: 5, two with attention).
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "llama": ("llama", dict(COMMON, num_hidden_layers=4)),
    "mistral": ("llama", dict(COMMON, num_hidden_layers=4, sliding_window=16)),
    "qwen2": ("llama", dict(COMMON, num_hidden_layers=4)),
    "qwen3": (
        "llama",
        dict(
            COMMON,
            num_hidden_layers=4,
            layer_types=["full_attention", "sliding_attention"] * 2,
            sliding_window=8,
            use_sliding_window=True,
        ),
    ),
    "phi3": ("llama", dict(COMMON, num_hidden_layers=4)),
    "gemma3_text": (
        "gemma3",
        dict(
            COMMON,
            num_hidden_layers=4,
            head_dim=8,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"] * 2,
        ),
    ),
    "gpt2": (
        "gpt2",
        dict(
            vocab_size=300,
            n_embd=32,
            n_layer=4,
            n_head=4,
            n_positions=128,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
        ),
    ),
    "qwen3_moe": (
        "moe",
        dict(
            COMMON,
            num_hidden_layers=4,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            decoder_sparse_step=2,  # layers 1 and 3 sparse, 0 and 2 dense: renumbering must keep that
        ),
    ),
    "mixtral": ("moe", dict(COMMON, num_hidden_layers=4, num_local_experts=4, num_experts_per_tok=2)),
    "nemotron_h": (
        "nemotron_h",
        dict(
            COMMON,
            layers_block_type=[
                "linear_attention",
                "moe",
                "full_attention",
                "linear_attention",
                "mlp",
                "full_attention",
            ],
            head_dim=8,
            mamba_num_heads=4,
            mamba_head_dim=16,
            n_groups=1,
            ssm_state_size=8,
            chunk_size=8,
            n_routed_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            moe_shared_expert_intermediate_size=16,
            n_shared_experts=1,
        ),
    ),
    # No dedicated adapter: the generic fallback must prove it understands the layers.
    "granite": ("generic", dict(COMMON, num_hidden_layers=4)),
}


def tiny_arch_model(model_type: str, seed: int = 0):
    """A tiny random model of ``model_type`` whose every block visibly matters."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **ARCHITECTURES[model_type][1])
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "emb" not in name and "wte" not in name and "wpe" not in name:
                p.mul_(4.0)
    return model.eval()


def gated_and_pruned(model, blocks, removed: list[str], ids: torch.Tensor):
    """(logits with ``removed`` gated to zero, a physically pruned copy, its logits).

    Asserts they agree within 1e-4: the check every architecture and every selector must pass."""
    import copy

    from optimum_blockprune.model.gates import Gates, removal_gates
    from optimum_blockprune.model.registry import get_adapter

    names = [b.name for b in blocks]
    with torch.no_grad(), Gates(model, get_adapter(model), blocks) as gates:
        gates.values = removal_gates(len(blocks), [names.index(n) for n in removed])
        gated = model(ids).logits
    pruned = copy.deepcopy(model)
    get_adapter(pruned).remove_blocks(pruned, removed)
    with torch.no_grad():
        physical = pruned(ids).logits
    assert (physical - gated).abs().max() <= 1e-4, (removed, float((physical - gated).abs().max()))
    return gated, pruned, physical


def save_pruned_model(model, folder) -> None:
    """Save ``model`` with plain ``save_pretrained``: branch-pruned configs mark themselves."""
    model.save_pretrained(folder)
