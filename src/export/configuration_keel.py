# Written by `keel export`; README.md in this folder describes the export.
"""Configuration of a keel decoder exported for Hugging Face transformers.

Every number the forward pass needs is an explicit key, including one residual form and one
alpha per sub-layer (sub-layer 2i is block i's attention, 2i + 1 its FFN), so this code derives
nothing from a placement's name:

    pre              x' = x + F(N(x))
    post             x' = N(alpha * x + F(x))              (Post-LN: alpha = 1; DeepNorm: (2 blocks)^(1/4))
    keel             x' = N_out(alpha * x + F(N_in(x)))
    plain            x' = x + F(x)                          (HybridNorm's attention)
    normed_shortcut  x' = N(x) + F(N(x))                    (HybridNorm's FFN)
"""

try:  # transformers 5.x
    from transformers import PreTrainedConfig as _BaseConfig
except ImportError:  # transformers 4.x
    from transformers import PretrainedConfig as _BaseConfig

RESIDUAL_FORMS = ("pre", "post", "keel", "plain", "normed_shortcut")
NORM_TYPES = ("rms_norm", "layer_norm")
FFN_TYPES = ("swiglu", "gelu")


class KeelConfig(_BaseConfig):
    model_type = "keel"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(
        self,
        vocab_size=256,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=None,
        head_dim=None,
        norm_type="rms_norm",
        norm_eps=1e-5,
        ffn_type="swiglu",
        qkv_norm=False,
        final_norm=True,
        residual_forms=None,
        residual_alphas=None,
        rope_theta=10000.0,
        max_position_embeddings=1024,
        initializer_range=0.02,
        use_cache=True,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        keel=None,
        **kwargs,
    ):
        # The base class first: transformers 5 drops some keys it receives (generation settings),
        # and 4.x sets its own defaults for others (tie_word_embeddings); ours are set after it.
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = hidden_size // num_attention_heads if head_dim is None else head_dim
        self.norm_type = norm_type
        self.norm_eps = norm_eps
        self.ffn_type = ffn_type
        self.qkv_norm = qkv_norm
        self.final_norm = final_norm
        n_sub = 2 * num_hidden_layers
        self.residual_forms = list(residual_forms) if residual_forms is not None else ["pre"] * n_sub
        self.residual_alphas = list(residual_alphas) if residual_alphas is not None else [1.0] * n_sub
        self.rope_theta = rope_theta
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self.tie_word_embeddings = tie_word_embeddings
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.keel = keel
        self._check()

    def _check(self):
        n_sub = 2 * self.num_hidden_layers
        if len(self.residual_forms) != n_sub or len(self.residual_alphas) != n_sub:
            raise ValueError(
                f"residual_forms and residual_alphas need one entry per sub-layer ({n_sub} for "
                f"{self.num_hidden_layers} layers), got {len(self.residual_forms)} and {len(self.residual_alphas)}"
            )
        bad = sorted(set(self.residual_forms) - set(RESIDUAL_FORMS))
        if bad:
            raise ValueError(f"unknown residual forms {bad}: use {', '.join(RESIDUAL_FORMS)}")
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"norm_type {self.norm_type!r}: use {' or '.join(NORM_TYPES)}")
        if self.ffn_type not in FFN_TYPES:
            raise ValueError(f"ffn_type {self.ffn_type!r}: use {' or '.join(FFN_TYPES)}")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError("num_key_value_heads must divide num_attention_heads")
        if self.head_dim % 2 != 0:
            raise ValueError("head_dim must be even (RoPE rotates halves)")
