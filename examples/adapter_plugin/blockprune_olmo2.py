"""An optimum-blockprune adapter for OLMo-2, registered through the public ``register_adapters`` hook.

OLMo-2 normalises each branch AFTER it (``residual + post_norm(branch(x))``), so the built-in
generic adapter refuses it: gating the attention module would not scale what joins the residual
stream. Naming the post-norms as the branches' outputs is all it takes. Install with
``pip install -e examples/adapter_plugin``; ``optimum-cli blockprune prune --list-adapters`` then
lists ``olmo2``.
"""

from __future__ import annotations

from collections.abc import Callable

from optimum_blockprune import Adapter, hookimpl


class Olmo2Adapter(Adapter):
    name = "olmo2"
    model_types = ("olmo2",)
    #: the modules of each branch (removed together) and their roles
    members = {
        "attn": {"self_attn": "attention", "post_attention_layernorm": "norm"},
        "mlp": {"mlp": "mlp", "post_feedforward_layernorm": "norm"},
    }
    #: the module whose output joins the residual stream: the gate scales it
    outputs = {"attn": "post_attention_layernorm", "mlp": "post_feedforward_layernorm"}


@hookimpl
def register_adapters(register: Callable[[Adapter], None]) -> None:
    register(Olmo2Adapter())
