//! The decoder-only language model, with the norm placement as a typed choice.
//!
//! Paper: Chen & Wei, "Post-LayerNorm Is Back: Stable, ExpressivE, and Deep", arXiv 2601.19895.
//!
//! The model is a stack of L sub-layers (L = `model.depth`; block i holds sub-layer 2i, attention,
//! and 2i+1, FFN). Each sub-layer wraps a branch F (attention or FFN) in a residual form:
//!
//! ```text
//! Pre-LN      x' = x + F(N(x))
//! Post-LN     x' = N(x + F(x))
//! Keel        x' = N_out(alpha * x + F(N_in(x))),   alpha = L
//! DeepNorm    x' = N(a * x + F(x)),                 a = (2N)^(1/4), N = blocks
//! Mix-LN      Post-LN in the first 25% of blocks, Pre-LN above
//! HybridNorm  attention x' = x + F(x) with Q, K, V normalized inside F; FFN x' = N(x) + F(N(x))
//! ```
//!
//! Keel's first layer (paper v2): x1 = x0 + Attn(N(x0)); x2 = N_out(x1 + FFN(N_in(x1))).
//! v1 makes the whole first block Pre-LN.
//!
//! Which form each sub-layer takes, and every other placement-specific choice (init scale, QKV
//! norm, final norm), is the placement's: see [`crate::placement`]. This file builds what it says.
//!
//! Activations run as (N, C) with N = B*T rows; attention sees (B, T, H, D) through its shape.
//! Weights are stored (in, out), so a linear layer is `x w` (`ops::linear`).

use crate::config::{FfnKind, NormKind, Precision, Resolved};
use crate::ops::{self, AttentionKernel, AttnShape, Kernels, Rope};
use crate::placement::ResidualForm;
use crate::rng::Rng;
use candle_core::{DType, Device, Result, Tensor, Var};
use std::sync::Arc;

/// Which part of the model a parameter belongs to, for per-layer gradient norms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Embedding,
    /// Sub-layer index, 0 = bottom.
    SubLayer(usize),
    FinalNorm,
    Head,
}

/// A named trainable tensor. `decay` is true for 2-D weight matrices (embeddings included).
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub var: Var,
    pub decay: bool,
    pub group: Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubLayerKind {
    Attn,
    Ffn,
}

impl SubLayerKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            SubLayerKind::Attn => "attn",
            SubLayerKind::Ffn => "ffn",
        }
    }
}

/// Creates parameters from keel's seeded RNG: each parameter's values depend only on the seed and
/// its name, so they are the same on every device and unaffected by other parameters.
struct ParamBuilder<'a> {
    seed: u64,
    dtype: DType,
    device: &'a Device,
    params: Vec<Param>,
}

impl ParamBuilder<'_> {
    fn push(&mut self, name: String, values: Vec<f64>, shape: &[usize], group: Group) -> Result<Tensor> {
        let t = Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(self.dtype)?.to_device(self.device)?;
        let var = Var::from_tensor(&t)?;
        let tensor = var.as_tensor().clone();
        self.params.push(Param { name, var, decay: shape.len() == 2, group });
        Ok(tensor)
    }

    fn normal(&mut self, name: String, shape: &[usize], std: f64, group: Group) -> Result<Tensor> {
        let mut rng = Rng::stream(self.seed, &name);
        let n: usize = shape.iter().product();
        let values = (0..n).map(|_| rng.normal() * std).collect();
        self.push(name, values, shape, group)
    }

    /// N(0, (std * scale(column))^2) for a 2-D weight, column by column.
    fn normal_by_column(
        &mut self,
        name: String,
        shape: &[usize],
        std: f64,
        scale: &dyn Fn(usize) -> f64,
        group: Group,
    ) -> Result<Tensor> {
        let mut rng = Rng::stream(self.seed, &name);
        let cols = shape[1];
        let n: usize = shape.iter().product();
        let values = (0..n).map(|i| rng.normal() * std * scale(i % cols)).collect();
        self.push(name, values, shape, group)
    }

    fn constant(&mut self, name: String, c: usize, value: f64, group: Group) -> Result<Tensor> {
        self.push(name, vec![value; c], &[c], group)
    }
}

/// A normalization layer (RMSNorm: gamma; LayerNorm: gamma and beta).
#[derive(Debug, Clone)]
pub struct Norm {
    pub kind: NormKind,
    pub gamma: Tensor,
    pub beta: Option<Tensor>,
    pub eps: f64,
}

impl Norm {
    fn new(b: &mut ParamBuilder, prefix: &str, kind: NormKind, c: usize, eps: f64, group: Group) -> Result<Self> {
        let gamma = b.constant(format!("{prefix}.weight"), c, 1.0, group)?;
        let beta = match kind {
            NormKind::RmsNorm => None,
            NormKind::LayerNorm => Some(b.constant(format!("{prefix}.bias"), c, 0.0, group)?),
        };
        Ok(Norm { kind, gamma, beta, eps })
    }

    /// N(x), x: (N, C).
    pub fn forward(&self, x: &Tensor, k: Kernels) -> Result<Tensor> {
        match (&self.kind, &self.beta) {
            (NormKind::RmsNorm, _) => ops::rms_norm(x, &self.gamma, self.eps, k),
            (NormKind::LayerNorm, Some(beta)) => ops::layer_norm(x, &self.gamma, beta, self.eps, k),
            (NormKind::LayerNorm, None) => unreachable!("layer norm has a bias"),
        }
    }

    /// N(alpha * x + f), fused for RMSNorm.
    pub fn residual(&self, x: &Tensor, f: &Tensor, alpha: f64, k: Kernels) -> Result<Tensor> {
        match self.kind {
            NormKind::RmsNorm => ops::residual_rms_norm(x, f, &self.gamma, alpha, self.eps, k),
            NormKind::LayerNorm => {
                let beta = self.beta.as_ref().expect("layer norm has a bias");
                ops::residual_layer_norm(x, f, &self.gamma, beta, alpha, self.eps, k)
            }
        }
    }
}

/// How a sub-layer combines the shortcut and its branch.
#[derive(Debug, Clone)]
pub enum Residual {
    /// x + F(N(x))
    Pre { norm: Norm },
    /// N(alpha * x + F(x)); Post-LN has alpha = 1.
    Post { alpha: f64, norm: Norm },
    /// N_out(alpha * x + F(N_in(x)))
    Keel { alpha: f64, norm_in: Norm, norm_out: Norm },
    /// x + F(x), no norm on the path (HybridNorm's attention normalizes inside F).
    Plain,
    /// N(x) + F(N(x)): the normalized input is also the shortcut (HybridNorm's FFN).
    NormedShortcut { norm: Norm },
}

impl Residual {
    /// The equation this residual computes, without its parameters.
    pub fn form(&self) -> ResidualForm {
        match self {
            Residual::Pre { .. } => ResidualForm::Pre,
            Residual::Post { alpha, .. } => ResidualForm::Post { alpha: *alpha },
            Residual::Keel { alpha, .. } => ResidualForm::Keel { alpha: *alpha },
            Residual::Plain => ResidualForm::Plain,
            Residual::NormedShortcut { .. } => ResidualForm::NormedShortcut,
        }
    }
}

/// Causal self-attention with RoPE and grouped KV heads (no biases).
#[derive(Debug, Clone)]
pub struct Attention {
    /// (C, (H + 2 Hkv) D): q, k and v projections side by side.
    pub wqkv: Tensor,
    /// (H D, C)
    pub wo: Tensor,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// HybridNorm's QKV-norm: q, k and v each normalized (over their full width) after projection.
    pub qkv_norm: Option<[Norm; 3]>,
    /// Mixed precision: the dtype of the projections' products.
    pub compute: Option<DType>,
    /// The fused CPU kernel (`train.attention`).
    pub kernel: AttentionKernel,
}

impl Attention {
    /// x: (B*T, C) -> (B*T, C).
    fn forward(&self, x: &Tensor, batch: usize, seq: usize, rope: &Arc<Rope>, k: Kernels) -> Result<Tensor> {
        let shape =
            AttnShape { batch, seq, n_heads: self.n_heads, n_kv_heads: self.n_kv_heads, head_dim: self.head_dim };
        // bf16 mixed precision on CUDA's fused kernels: the qkv product stays bf16 and attention
        // runs in bf16 (the flash kernels read bf16, accumulate in f32); only the output
        // projection's product is cast back to x's dtype, as PyTorch's autocast does.
        let bf16 = DType::BF16;
        if self.compute == Some(bf16) && k == Kernels::Fused && x.device().is_cuda() && self.qkv_norm.is_none() {
            let qkv = x.to_dtype(bf16)?.matmul(&self.wqkv.to_dtype(bf16)?)?;
            let a = ops::causal_attention(&qkv, shape, rope, k, self.kernel)?;
            return a.matmul(&self.wo.to_dtype(bf16)?)?.to_dtype(x.dtype());
        }
        let qkv = self.project_qkv(x, k)?;
        ops::linear_in(&ops::causal_attention(&qkv, shape, rope, k, self.kernel)?, &self.wo, k, self.compute)
    }

    /// x (B*T, C) -> qkv (B*T, (H + 2 Hkv) D), with HybridNorm's q, k and v norms applied.
    fn project_qkv(&self, x: &Tensor, k: Kernels) -> Result<Tensor> {
        let mut qkv = ops::linear_in(x, &self.wqkv, k, self.compute)?;
        if let Some(norms) = &self.qkv_norm {
            let widths = [self.n_heads, self.n_kv_heads, self.n_kv_heads].map(|h| h * self.head_dim);
            let mut start = 0;
            let mut parts = Vec::with_capacity(3);
            for (norm, w) in norms.iter().zip(widths) {
                parts.push(norm.forward(&qkv.narrow(1, start, w)?.contiguous()?, k)?);
                start += w;
            }
            qkv = Tensor::cat(&parts, 1)?;
        }
        Ok(qkv)
    }

    /// x: (B*T, C), the T new positions `start..start + T` -> (B*T, C), attending to the keys and
    /// values of the `start` earlier positions in `cache`, which then holds all `start + T`.
    fn forward_cached(
        &self,
        x: &Tensor,
        (batch, seq): (usize, usize),
        start: usize,
        rope: &Arc<Rope>,
        k: Kernels,
        cache: &mut ops::AttentionCache,
    ) -> Result<Tensor> {
        let shape =
            AttnShape { batch, seq, n_heads: self.n_heads, n_kv_heads: self.n_kv_heads, head_dim: self.head_dim };
        // Detached: a cached key that remembered how it was computed would keep every earlier
        // step's activations alive through its graph.
        let qkv = self.project_qkv(x, k)?.detach();
        let a = ops::attention_at(&qkv, shape, rope, start, cache, k)?;
        ops::linear_in(&a, &self.wo, k, self.compute)
    }
}

/// Position-wise feed-forward network.
#[derive(Debug, Clone)]
pub struct Ffn {
    pub kind: FfnKind,
    /// SwiGLU: (C, 2 d_ff) = [W_gate | W_up]; GELU: (C, d_ff).
    pub w_in: Tensor,
    /// (d_ff, C)
    pub w_out: Tensor,
    /// Mixed precision: the dtype of the products.
    pub compute: Option<DType>,
}

impl Ffn {
    /// x: (B*T, C) -> (B*T, C).
    fn forward(&self, x: &Tensor, k: Kernels) -> Result<Tensor> {
        let h = ops::linear_in(x, &self.w_in, k, self.compute)?;
        let a = match self.kind {
            FfnKind::Swiglu => ops::swiglu(&h, k)?,
            FfnKind::Gelu => ops::gelu(&h, k)?,
        };
        ops::linear_in(&a, &self.w_out, k, self.compute)
    }
}

#[derive(Debug, Clone)]
pub enum Branch {
    Attn(Attention),
    Ffn(Ffn),
}

/// A sub-layer's branch F against its shortcut a x, measured over a batch (Frobenius norms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BranchMeasure {
    /// r = ||F|| / ||a x||.
    pub branch_ratio: f64,
    /// s = ||a x + F|| / ||a x||: sqrt(1 + r^2) when F is orthogonal to x, more when they align.
    pub sum_ratio: f64,
}

#[derive(Debug, Clone)]
pub struct SubLayer {
    pub index: usize,
    pub kind: SubLayerKind,
    pub residual: Residual,
    pub branch: Branch,
}

impl SubLayer {
    /// F(x) alone: the attention or FFN branch.
    pub fn branch(&self, x: &Tensor, batch: usize, seq: usize, rope: &Arc<Rope>, k: Kernels) -> Result<Tensor> {
        match &self.branch {
            Branch::Attn(a) => a.forward(x, batch, seq, rope, k),
            Branch::Ffn(f) => f.forward(x, k),
        }
    }

    /// The branch against the shortcut it is added to, over the batch at this sub-layer's input x
    /// (B*T, C) (Pre-LN: F(N(x)) against x; Post-LN and DeepNorm: F(x) against alpha x; Keel:
    /// F(N_in(x)) against alpha x); `None` for HybridNorm's forms.
    pub fn branch_to_shortcut(
        &self,
        x: &Tensor,
        batch: usize,
        seq: usize,
        rope: &Arc<Rope>,
        k: Kernels,
    ) -> Result<Option<BranchMeasure>> {
        let (f, a) = match &self.residual {
            Residual::Pre { norm } => (self.branch(&norm.forward(x, k)?, batch, seq, rope, k)?, 1.0),
            Residual::Post { alpha, .. } => (self.branch(x, batch, seq, rope, k)?, *alpha),
            Residual::Keel { alpha, norm_in, .. } => {
                (self.branch(&norm_in.forward(x, k)?, batch, seq, rope, k)?, *alpha)
            }
            Residual::Plain | Residual::NormedShortcut { .. } => return Ok(None),
        };
        let norm = |t: &Tensor| -> Result<f64> { t.to_dtype(DType::F64)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>() };
        let shortcut = a * norm(x)?;
        let sum = norm(&((x * a)? + &f)?)?;
        Ok(Some(BranchMeasure { branch_ratio: norm(&f)? / shortcut, sum_ratio: sum / shortcut }))
    }

    /// x: (B*T, C) -> (B*T, C), one residual step of the paper's equations.
    pub fn forward(&self, x: &Tensor, batch: usize, seq: usize, rope: &Arc<Rope>, k: Kernels) -> Result<Tensor> {
        self.residual_step(x, k, |h| self.branch(h, batch, seq, rope, k))
    }

    /// The residual step with the branch F given as `f` (the full pass, or a cached one).
    fn residual_step(&self, x: &Tensor, k: Kernels, mut f: impl FnMut(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        match &self.residual {
            Residual::Pre { norm } => x + f(&norm.forward(x, k)?)?,
            Residual::Post { alpha, norm } => norm.residual(x, &f(x)?, *alpha, k),
            Residual::Keel { alpha, norm_in, norm_out } => {
                norm_out.residual(x, &f(&norm_in.forward(x, k)?)?, *alpha, k)
            }
            Residual::Plain => x + f(x)?,
            Residual::NormedShortcut { norm } => {
                let h = norm.forward(x, k)?;
                &h + f(&h)?
            }
        }
    }

    /// The sub-layer with its branch removed (F = 0), keeping the shortcut and any norm on it:
    /// Keel x' = N_out(alpha * x), Post-LN x' = N(alpha * x), Pre-LN x' = x.
    pub fn forward_without_branch(&self, x: &Tensor, k: Kernels) -> Result<Tensor> {
        match &self.residual {
            Residual::Pre { .. } | Residual::Plain => Ok(x.clone()),
            Residual::Post { alpha, norm } => norm.forward(&(x * *alpha)?, k),
            Residual::Keel { alpha, norm_out, .. } => norm_out.forward(&(x * *alpha)?, k),
            Residual::NormedShortcut { norm } => norm.forward(x, k),
        }
    }
}

/// Keys and values of the positions decoded so far, one [`ops::AttentionCache`] per sub-layer
/// (FFNs leave theirs empty), each sized for the model's context on its first use.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<ops::AttentionCache>,
    len: usize,
    left_padding: Vec<usize>,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache for a left-padded batch: row b's first `left_padding[b]` tokens are padding, and
    /// its logits after them are those of the row decoded alone (see
    /// [`ops::AttentionCache::left_padded`]).
    pub fn left_padded(left_padding: Vec<usize>) -> Self {
        KvCache { left_padding, ..Self::default() }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The language model: embedding, L sub-layers, optional final norm, LM head.
pub struct Model {
    pub tok_emb: Tensor,
    pub sublayers: Vec<SubLayer>,
    pub final_norm: Option<Norm>,
    /// (C, V); `None` when tied to the embedding.
    pub head: Option<Tensor>,
    pub params: Vec<Param>,
    pub kernels: Kernels,
    pub rope: Arc<Rope>,
    pub vocab_size: usize,
    /// Mixed precision: the dtype of matrix products.
    pub compute: Option<DType>,
}

/// The dtype of parameters and of the residual stream.
pub fn dtype_of(p: Precision) -> DType {
    match p {
        Precision::F32 | Precision::Bf16 => DType::F32,
        Precision::F64 => DType::F64,
    }
}

/// The dtype matrix products run in, when it differs from the parameters'.
pub fn compute_dtype_of(p: Precision) -> Option<DType> {
    match p {
        Precision::Bf16 => Some(DType::BF16),
        Precision::F32 | Precision::F64 => None,
    }
}

impl Model {
    pub fn new(r: &Resolved, device: &Device) -> Result<Self> {
        let m = r.model();
        let c = m.d_model;
        let std = m.init_std;
        let (h, hkv, d) = (m.n_heads, r.n_kv_heads(), r.head_dim());
        let (placement, stack) = (m.placement, r.stack());
        let mut b =
            ParamBuilder { seed: r.train().seed, dtype: dtype_of(r.train().precision), device, params: Vec::new() };
        let compute = compute_dtype_of(r.train().precision);
        let tok_emb = b.normal("tok_emb".into(), &[r.vocab_size(), c], std, Group::Embedding)?;
        let mut sublayers = Vec::with_capacity(m.depth);
        for index in 0..m.depth {
            let group = Group::SubLayer(index);
            let (kind, name) = if index % 2 == 0 {
                (SubLayerKind::Attn, format!("blocks.{}.attn", index / 2))
            } else {
                (SubLayerKind::Ffn, format!("blocks.{}.ffn", index / 2))
            };
            let norm = |b: &mut ParamBuilder, suffix: &str| {
                Norm::new(b, &format!("{name}.{suffix}"), m.norm, c, m.norm_eps, group)
            };
            let residual = match placement.residual_form(index, &stack) {
                ResidualForm::Pre => Residual::Pre { norm: norm(&mut b, "norm")? },
                ResidualForm::Post { alpha } => Residual::Post { alpha, norm: norm(&mut b, "norm")? },
                ResidualForm::Keel { alpha } => {
                    Residual::Keel { alpha, norm_in: norm(&mut b, "norm_in")?, norm_out: norm(&mut b, "norm_out")? }
                }
                ResidualForm::Plain => Residual::Plain,
                ResidualForm::NormedShortcut => Residual::NormedShortcut { norm: norm(&mut b, "norm")? },
            };
            // The FFN, value and output projections' init scale (DeepNet's beta, else 1).
            let beta = placement.branch_init_scale(&stack);
            let qkv_norm = if placement.normalizes_qkv() && kind == SubLayerKind::Attn {
                Some([
                    Norm::new(&mut b, &format!("{name}.q_norm"), m.norm, h * d, m.norm_eps, group)?,
                    Norm::new(&mut b, &format!("{name}.k_norm"), m.norm, hkv * d, m.norm_eps, group)?,
                    Norm::new(&mut b, &format!("{name}.v_norm"), m.norm, hkv * d, m.norm_eps, group)?,
                ])
            } else {
                None
            };
            let branch = match kind {
                SubLayerKind::Attn => {
                    // Columns [q | k | v]: only v takes DeepNet's beta.
                    let v_start = (h + hkv) * d;
                    let v_scale = |col: usize| if col >= v_start { beta } else { 1.0 };
                    Branch::Attn(Attention {
                        wqkv: b.normal_by_column(
                            format!("{name}.wqkv"),
                            &[c, (h + 2 * hkv) * d],
                            std,
                            &v_scale,
                            group,
                        )?,
                        wo: b.normal(format!("{name}.wo"), &[h * d, c], std * beta, group)?,
                        n_heads: h,
                        n_kv_heads: hkv,
                        head_dim: d,
                        qkv_norm,
                        compute,
                        kernel: r.train().attention,
                    })
                }
                SubLayerKind::Ffn => {
                    let width = match m.ffn {
                        FfnKind::Swiglu => 2 * r.d_ff(),
                        FfnKind::Gelu => r.d_ff(),
                    };
                    Branch::Ffn(Ffn {
                        kind: m.ffn,
                        w_in: b.normal(format!("{name}.w_in"), &[c, width], std * beta, group)?,
                        w_out: b.normal(format!("{name}.w_out"), &[r.d_ff(), c], std * beta, group)?,
                        compute,
                    })
                }
            };
            sublayers.push(SubLayer { index, kind, residual, branch });
        }
        let final_norm = if r.final_norm() {
            Some(Norm::new(&mut b, "final_norm", m.norm, c, m.norm_eps, Group::FinalNorm)?)
        } else {
            None
        };
        let head = if m.tie_embeddings {
            None
        } else {
            Some(b.normal("lm_head".into(), &[c, r.vocab_size()], std, Group::Head)?)
        };
        Ok(Model {
            tok_emb,
            sublayers,
            final_norm,
            head,
            params: b.params,
            kernels: Kernels::resolve(r.train().kernels, device, dtype_of(r.train().precision)),
            rope: Arc::new(Rope::new(r.train().seq_len, d, m.rope_theta)),
            vocab_size: r.vocab_size(),
            compute,
        })
    }

    /// Sets every parameter from `tensors` (by name; dtype and device converted). `Ok(Err(why))`
    /// names the first parameter that is missing or has another shape; nothing is set then.
    pub fn load_weights(
        &self,
        tensors: &std::collections::HashMap<String, Tensor>,
    ) -> Result<std::result::Result<(), String>> {
        for p in &self.params {
            match tensors.get(&p.name) {
                None => return Ok(Err(format!("lacks the tensor {}", p.name))),
                Some(t) if t.dims() != p.var.dims() => {
                    return Ok(Err(format!(
                        "tensor {} has shape {:?}, the model needs {:?}",
                        p.name,
                        t.dims(),
                        p.var.dims()
                    )))
                }
                Some(_) => {}
            }
        }
        for p in &self.params {
            p.var.set(&tensors[&p.name].to_dtype(p.var.dtype())?.to_device(p.var.device())?)?;
        }
        Ok(Ok(()))
    }

    pub fn n_params(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }

    /// tokens: (B, T) u32 -> the residual stream after the last sub-layer and final norm, (B*T, C).
    pub fn hidden(&self, tokens: &Tensor) -> Result<Tensor> {
        Ok(self.hidden_traced(tokens, false)?.0)
    }

    /// Like [`Model::hidden`]; with `trace`, also returns one zero-valued variable per sub-layer,
    /// added to its input x_l (B*T, C), bottom first: after a backward pass its gradient is
    /// dL/dx_l (Candle drops the gradients of intermediate tensors, but keeps those of variables).
    pub fn hidden_traced(&self, tokens: &Tensor, trace: bool) -> Result<(Tensor, Vec<Var>)> {
        let (batch, seq) = tokens.dims2()?;
        let mut x = self.tok_emb.embedding(&tokens.flatten_all()?)?;
        let mut inputs = Vec::new();
        for sl in &self.sublayers {
            if trace {
                let tap = Var::zeros(x.shape(), x.dtype(), x.device())?;
                x = (x + tap.as_tensor())?;
                inputs.push(tap);
            }
            x = sl.forward(&x, batch, seq, &self.rope, self.kernels)?;
        }
        let x = match &self.final_norm {
            Some(n) => n.forward(&x, self.kernels)?,
            None => x,
        };
        Ok((x, inputs))
    }

    /// [`SubLayer::branch_to_shortcut`] at every sub-layer for `tokens` (B, T), bottom first,
    /// without a graph.
    pub fn branch_ratios(&self, tokens: &Tensor) -> Result<Vec<Option<BranchMeasure>>> {
        let (batch, seq) = tokens.dims2()?;
        let mut x = self.tok_emb.embedding(&tokens.flatten_all()?)?.detach();
        let mut ratios = Vec::with_capacity(self.sublayers.len());
        for sl in &self.sublayers {
            ratios.push(sl.branch_to_shortcut(&x, batch, seq, &self.rope, self.kernels)?);
            x = sl.forward(&x, batch, seq, &self.rope, self.kernels)?.detach();
        }
        Ok(ratios)
    }

    /// Like [`Model::hidden`] with sub-layer `removed`'s branch dropped (the layer-removal study).
    pub fn hidden_removing(&self, tokens: &Tensor, removed: Option<usize>) -> Result<Tensor> {
        let (batch, seq) = tokens.dims2()?;
        let mut x = self.tok_emb.embedding(&tokens.flatten_all()?)?;
        for sl in &self.sublayers {
            x = if Some(sl.index) == removed {
                sl.forward_without_branch(&x, self.kernels)?
            } else {
                sl.forward(&x, batch, seq, &self.rope, self.kernels)?
            };
        }
        match &self.final_norm {
            Some(n) => n.forward(&x, self.kernels),
            None => Ok(x),
        }
    }

    /// Logits from the final hidden state (B*T, C) -> (B*T, V).
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        match (&self.head, self.compute) {
            (Some(w), _) => ops::linear_in(x, w, self.kernels, self.compute),
            (None, None) => x.matmul(&self.tok_emb.t()?),
            (None, Some(_)) => ops::linear_in(x, &self.tok_emb.t()?, self.kernels, self.compute),
        }
    }

    /// tokens: (B, T) u32 -> logits (B*T, V).
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        self.logits(&self.hidden(tokens)?)
    }

    /// The longest sequence the model takes: its RoPE table's length, `train.seq_len`.
    pub fn context_len(&self) -> usize {
        self.rope.seq_len
    }

    /// Incremental decoding: tokens (B, T) u32 at positions `cache.len()..cache.len() + T`, after
    /// the positions the cache holds -> logits (B*T, V), equal to the rows of [`Model::forward`]
    /// over the whole sequence. Every placement caches alike: the norms act per position, so only
    /// attention looks back, and it reads each layer's cached keys and values ([`ops::attention_at`]).
    pub fn forward_cached(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (batch, seq) = tokens.dims2()?;
        let start = cache.len;
        if start + seq > self.context_len() {
            candle_core::bail!("{} positions asked of a model whose context is {}", start + seq, self.context_len());
        }
        if cache.layers.is_empty() {
            let n = self.sublayers.len();
            let layer = || ops::AttentionCache::left_padded(self.context_len(), cache.left_padding.clone());
            cache.layers = (0..n).map(|_| layer()).collect();
        }
        let mut x = self.tok_emb.embedding(&tokens.flatten_all()?)?.detach();
        for sl in &self.sublayers {
            x = match &sl.branch {
                Branch::Attn(a) => {
                    let layer = &mut cache.layers[sl.index];
                    sl.residual_step(&x, self.kernels, |h| {
                        a.forward_cached(h, (batch, seq), start, &self.rope, self.kernels, layer)
                    })?
                }
                Branch::Ffn(_) => sl.forward(&x, batch, seq, &self.rope, self.kernels)?,
            }
            .detach();
        }
        cache.len += seq;
        let x = match &self.final_norm {
            Some(n) => n.forward(&x, self.kernels)?,
            None => x,
        };
        self.logits(&x)
    }

    /// Mean next-token cross-entropy; tokens and targets: (B, T) u32.
    pub fn loss(&self, tokens: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let logits = self.forward(tokens)?;
        ops::cross_entropy(&logits, &targets.flatten_all()?, self.kernels)
    }

    /// [`Model::loss`] for validation: the same ops on the same values, but each sub-layer's
    /// output is detached, so no graph (and none of its intermediates) outlives the sub-layer
    /// that made it: the pass peaks at one sub-layer's activations plus the logits.
    pub fn loss_without_graph(&self, tokens: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let (batch, seq) = tokens.dims2()?;
        let mut x = self.tok_emb.embedding(&tokens.flatten_all()?)?.detach();
        for sl in &self.sublayers {
            x = sl.forward(&x, batch, seq, &self.rope, self.kernels)?.detach();
        }
        let x = match &self.final_norm {
            Some(n) => n.forward(&x, self.kernels)?.detach(),
            None => x,
        };
        Ok(ops::cross_entropy(&self.logits(&x)?, &targets.flatten_all()?, self.kernels)?.detach())
    }
}
