# Written by `keel export`; README.md in this folder describes the export.
"""keel's decoder for Hugging Face transformers: the forward pass of keel's `model.rs`.

Token embedding, then 2 * num_hidden_layers sub-layers (2i: block i's attention, 2i + 1: its FFN),
each combining its shortcut x and its branch F as config.residual_forms[i] says
(configuration_keel.py lists the forms), then an optional final norm and the LM head (the
embedding when tied).

- Norms: RMSNorm y = x / sqrt(mean(x^2) + eps) * w; LayerNorm y = (x - mean) / sqrt(var + eps)
  * w + b (biased variance). Both run in float32.
- Attention: q, k, v = x W_q, x W_k, x W_v (no biases); with config.qkv_norm (HybridNorm) each
  is normalized over its full width; RoPE rotates the halves of each head (x[j], x[j + D/2]) by
  position * theta^(-2j/D), angles in float64; softmax(q k^T / sqrt(D) + mask) v; query head h
  reads key/value head h // (H / H_kv).
- FFN: SwiGLU down(silu(gate(x)) * up(x)), or GELU down(gelu(up(x))) with the exact erf GELU.

Works with transformers 4.5x and 5.x: a DynamicCache made at prefill when use_cache is on,
attention masks and positions from a (left-padded) 2D attention_mask, attention through
ALL_ATTENTION_FUNCTIONS (sdpa, vLLM's, ...) or the eager code below.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

try:
    from transformers import Cache, DynamicCache
except ImportError:  # pragma: no cover - older layouts
    from transformers.cache_utils import Cache, DynamicCache

try:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
except ImportError:  # pragma: no cover - eager attention only
    ALL_ATTENTION_FUNCTIONS = None

try:  # transformers 5.x: init functions that leave loaded weights alone
    from transformers import initialization as _init
except ImportError:  # transformers 4.x
    _init = nn.init

from .configuration_keel import KeelConfig


def _cache_field(cls):
    """The name this transformers version gives the cache in output objects (`cache` in recent
    5.x, `past_key_values` before)."""
    names = getattr(cls, "__dataclass_fields__", {})
    return "cache" if "cache" in names and "past_key_values" not in names else "past_key_values"


def _output(cls, cache, **fields):
    """An output object of class `cls` holding `cache` under the name this version declares."""
    fields[_cache_field(cls)] = cache
    return cls(**fields)


class KeelNorm(nn.Module):
    """RMSNorm (weight) or LayerNorm (weight and bias) over the last dim, in float32."""

    def __init__(self, width, norm_type, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width)) if norm_type == "layer_norm" else None
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        h = x.float()
        if self.bias is None:
            y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        else:
            hc = h - h.mean(-1, keepdim=True)
            y = hc * torch.rsqrt(hc.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
            y = y + self.bias.float()
        return y.to(dtype)


def rope_tables(position_ids, head_dim, theta, dtype):
    """cos, sin of shape (B, 1, T, D/2) for positions (B, T): angle position * theta^(-2j/D) in
    float64, as keel computes its tables, then rounded to `dtype`."""
    device = position_ids.device
    work = torch.device("cpu") if device.type == "mps" else device  # no float64 on MPS
    j = torch.arange(head_dim // 2, dtype=torch.float64, device=work)
    inv_freq = torch.pow(torch.tensor(float(theta), dtype=torch.float64, device=work), -(2.0 * j) / head_dim)
    angles = position_ids.to(device=work, dtype=torch.float64)[..., None] * inv_freq
    cos = angles.cos().to(device=device, dtype=dtype)[:, None]
    sin = angles.sin().to(device=device, dtype=dtype)[:, None]
    return cos, sin


def apply_rope(x, cos, sin):
    """x (B, H, T, D): the pairs (x[j], x[j + D/2]) rotated ("rotate half", as Llama)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def repeat_kv(x, n_rep):
    """(B, H_kv, T, D) -> (B, H_kv * n_rep, T, D): key/value head g serves query heads
    g * n_rep .. (g + 1) * n_rep - 1."""
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def eager_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """softmax(q k^T * scaling + mask) v. query (B, H, T, D), key/value (B, H_kv, S, D), mask
    additive (B, 1, T, S) or None for plain causal attention (T == S, or T == 1). Returns the
    output as (B, T, H, D) and the probabilities."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    t, s = scores.shape[-2:]
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, :s]
    elif t > 1:
        causal = torch.ones(t, s, dtype=torch.bool, device=scores.device).tril(s - t)
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    probs = F.softmax(scores.float(), dim=-1).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


class KeelAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        c, d = config.hidden_size, config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.head_dim = d
        self.scaling = 1.0 / math.sqrt(d)
        self.is_causal = True
        self.attention_dropout = 0.0
        self.q_proj = nn.Linear(c, self.num_heads * d, bias=False)
        self.k_proj = nn.Linear(c, self.num_key_value_heads * d, bias=False)
        self.v_proj = nn.Linear(c, self.num_key_value_heads * d, bias=False)
        self.o_proj = nn.Linear(self.num_heads * d, c, bias=False)
        if config.qkv_norm:
            norm = lambda width: KeelNorm(width, config.norm_type, config.norm_eps)  # noqa: E731
            self.q_norm = norm(self.num_heads * d)
            self.k_norm = norm(self.num_key_value_heads * d)
            self.v_norm = norm(self.num_key_value_heads * d)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, cache=None, **kwargs):
        b, t, _ = hidden_states.shape
        q, k, v = self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
        if self.config.qkv_norm:
            q, k, v = self.q_norm(q), self.k_norm(k), self.v_norm(v)
        q = q.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        impl = getattr(self.config, "_attn_implementation", None) or "eager"
        if impl == "eager" or ALL_ATTENTION_FUNCTIONS is None:
            attention = eager_attention_forward
        else:
            attention = ALL_ATTENTION_FUNCTIONS[impl]
        out, weights = attention(
            self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs
        )
        out = out.reshape(b, t, self.num_heads * self.head_dim).contiguous()
        return self.o_proj(out), weights


class KeelMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        c, f = config.hidden_size, config.intermediate_size
        self.swiglu = config.ffn_type == "swiglu"
        if self.swiglu:
            self.gate_proj = nn.Linear(c, f, bias=False)
        self.up_proj = nn.Linear(c, f, bias=False)
        self.down_proj = nn.Linear(f, c, bias=False)

    def forward(self, x):
        if self.swiglu:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x), approximate="none"))


# Which norms a residual form has: one on the branch's input (`*_norm_in`), one after the sum
# (`*_norm_out`).
_NORM_IN = ("pre", "keel", "normed_shortcut")
_NORM_OUT = ("post", "keel")


class KeelDecoderLayer(nn.Module):
    """Block i: sub-layers 2i (attention) and 2i + 1 (FFN), each in its own residual form."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.forms = {
            "attn": (config.residual_forms[2 * layer_idx], float(config.residual_alphas[2 * layer_idx])),
            "ffn": (config.residual_forms[2 * layer_idx + 1], float(config.residual_alphas[2 * layer_idx + 1])),
        }
        self.self_attn = KeelAttention(config, layer_idx)
        self.mlp = KeelMLP(config)
        for which, (form, _) in self.forms.items():
            if form in _NORM_IN:
                setattr(self, f"{which}_norm_in", KeelNorm(config.hidden_size, config.norm_type, config.norm_eps))
            if form in _NORM_OUT:
                setattr(self, f"{which}_norm_out", KeelNorm(config.hidden_size, config.norm_type, config.norm_eps))

    def _sublayer(self, which, x, branch):
        form, alpha = self.forms[which]
        if form == "pre":  # x + F(N(x))
            return x + branch(getattr(self, f"{which}_norm_in")(x))
        if form == "post":  # N(alpha x + F(x))
            return getattr(self, f"{which}_norm_out")(_scaled(x, alpha) + branch(x))
        if form == "keel":  # N_out(alpha x + F(N_in(x)))
            f = branch(getattr(self, f"{which}_norm_in")(x))
            return getattr(self, f"{which}_norm_out")(_scaled(x, alpha) + f)
        if form == "plain":  # x + F(x)
            return x + branch(x)
        # normed_shortcut: N(x) + F(N(x))
        h = getattr(self, f"{which}_norm_in")(x)
        return h + branch(h)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, cache=None, **kwargs):
        weights = []

        def attn(h):
            out, w = self.self_attn(h, position_embeddings, attention_mask, cache, **kwargs)
            weights.append(w)
            return out

        x = self._sublayer("attn", hidden_states, attn)
        x = self._sublayer("ffn", x, self.mlp)
        return x, weights[0]


def _scaled(x, alpha):
    return x if alpha == 1.0 else x * alpha


class KeelPreTrainedModel(PreTrainedModel):
    config_class = KeelConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["KeelDecoderLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True
    _supports_cache_class = True  # transformers 4.4x

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            _init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, KeelNorm):
            _init.ones_(module.weight)
            if module.bias is not None:
                _init.zeros_(module.bias)


class KeelModel(KeelPreTrainedModel):
    """The decoder without its head: returns the hidden states after the final norm (if any)."""

    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(KeelDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        if config.final_norm:
            self.norm = KeelNorm(config.hidden_size, config.norm_type, config.norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        cache=None,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, Cache):
            raise ValueError("the cache must be a transformers Cache (e.g. DynamicCache), not a tuple")
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if use_cache and cache is None:
            try:
                cache = DynamicCache(config=self.config)
            except TypeError:  # transformers before 4.56
                cache = DynamicCache()
        output_attentions = bool(output_attentions)
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)

        b, t = inputs_embeds.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        device = inputs_embeds.device
        mask2d = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        if mask2d is not None and mask2d.shape[-1] != past + t:
            raise ValueError(
                f"attention_mask covers {mask2d.shape[-1]} positions; the cache holds {past} and the input adds {t}"
            )
        if position_ids is None:
            if mask2d is not None:
                # Left padding: the first real token is position 0.
                position_ids = (mask2d.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                position_ids = torch.arange(past, past + t, device=device)[None].expand(b, t)
        elif position_ids.dim() == 1:
            position_ids = position_ids[None]
        position_embeddings = rope_tables(position_ids, self.config.head_dim, self.config.rope_theta, inputs_embeds.dtype)
        mask4d = self._mask(attention_mask, b, t, past, inputs_embeds.dtype, device)

        hidden = inputs_embeds
        all_hidden = [] if output_hidden_states else None
        all_attn = [] if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden)
            hidden, w = layer(
                hidden, position_embeddings, mask4d, cache, output_attentions=output_attentions, **kwargs
            )
            if output_attentions:
                all_attn.append(w)
        if self.config.final_norm:
            hidden = self.norm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)
        all_hidden = tuple(all_hidden) if all_hidden is not None else None
        all_attn = tuple(all_attn) if all_attn is not None else None
        if not return_dict:
            return tuple(v for v in (hidden, cache, all_hidden, all_attn) if v is not None)
        return _output(
            BaseModelOutputWithPast, cache, last_hidden_state=hidden, hidden_states=all_hidden, attentions=all_attn
        )

    def _mask(self, attention_mask, b, t, past, dtype, device):
        """The additive (B, 1, T, past + T) mask: causal, and pad keys (attention_mask 0) masked.
        None where plain causal attention is exact (no padding, and no cached prefix under a
        multi-token input), so sdpa can use its causal kernels; a 4D mask is used as given."""
        if attention_mask is not None and attention_mask.dim() == 4:
            if attention_mask.dtype == torch.bool:
                return torch.zeros(attention_mask.shape, dtype=dtype, device=device).masked_fill(
                    ~attention_mask, torch.finfo(dtype).min
                )
            return attention_mask
        padded = attention_mask is not None and not bool((attention_mask != 0).all())
        if not padded and (past == 0 or t == 1):
            return None
        s = past + t
        allowed = torch.arange(s, device=device)[None, :] <= torch.arange(past, s, device=device)[:, None]
        allowed = allowed[None, None].expand(b, 1, t, s)
        if padded:
            allowed = allowed & (attention_mask[:, None, None, :s] != 0)
        return torch.zeros((b, 1, t, s), dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)


class KeelForCausalLM(KeelPreTrainedModel, GenerationMixin):
    """The decoder and its LM head: logits = hidden W_head^T (W_head = the embedding when tied)."""

    def __init__(self, config):
        super().__init__(config)
        self.model = KeelModel(config)
        # A tied model has no head of its own: its logits use the embedding directly.
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        logits_to_keep=0,
        cache=None,
        **kwargs,
    ):
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif not isinstance(logits_to_keep, int):
            hidden = hidden[:, logits_to_keep]
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(hidden, weight)
        loss = None
        if labels is not None:
            # Position t predicts token t + 1; label -100 is ignored.
            shift_logits = logits[..., :-1, :].contiguous().float()
            shift_labels = labels[..., 1:].contiguous().to(shift_logits.device)
            loss = F.cross_entropy(
                shift_logits.view(-1, shift_logits.shape[-1]), shift_labels.view(-1), ignore_index=-100
            )
        cache_out = getattr(out, _cache_field(type(out)), None)
        if not return_dict:
            rest = tuple(v for v in (cache_out, out.hidden_states, out.attentions) if v is not None)
            return ((loss,) if loss is not None else ()) + (logits,) + rest
        return _output(
            CausalLMOutputWithPast,
            cache_out,
            loss=loss,
            logits=logits,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


__all__ = ["KeelConfig", "KeelModel", "KeelForCausalLM", "KeelPreTrainedModel"]
