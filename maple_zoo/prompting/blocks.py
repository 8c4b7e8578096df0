"""A faster, numerically equivalent forward for open_clip's standard residual attention block.

Three exact savings over `block(x)`:
- fused attention (F.scaled_dot_product_attention) instead of nn.MultiheadAttention's unfused
  training path;
- query pruning in the last block: only the pooled rows (CLS for the image tower, end-of-text for
  the text tower) reach the loss, so the last block computes keys/values for every token but
  queries, attention output and MLP for those rows alone;
- a shared prefix under the causal text mask: positions before the first one where the class
  prompts differ ("<sot> ctx ctx of a" for MaPLe's "a photo of a {}.") attend only to each other,
  so they are the same in every row; they are computed once and every row's remaining positions
  attend to their keys and values.
Blocks of other types (open_clip's CustomResidualAttentionBlock) fall back to their own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


def is_standard(block: nn.Module) -> bool:
    attn = getattr(block, "attn", None)
    return (isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim and attn.in_proj_bias is not None
            and not hasattr(block, "ln_1_kv") and attn.batch_first)


def _pick(x: Tensor, rows: Tensor) -> Tensor:
    """x[b, rows[b]] for every b, as (B, 1, d)."""
    return x[torch.arange(x.shape[0], device=x.device), rows].unsqueeze(1)


def _project(block: nn.Module, x: Tensor, h: Tensor, rows: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(residual, q, k, v) of x with h = ln_1(x): every row, or with `rows` queries and residual for those
    rows alone (keys and values always cover every position)."""
    d = x.shape[-1]
    w, bias = block.attn.in_proj_weight, block.attn.in_proj_bias
    if rows is None:
        return x, *F.linear(h, w, bias).chunk(3, dim=-1)
    k, v = F.linear(h, w[d:], bias[d:]).chunk(2, dim=-1)
    return _pick(x, rows), F.linear(_pick(h, rows), w[:d], bias[:d]), k, v


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, heads: int) -> Tensor:
    """Multi-head attention of q (B, Lq, d) over k, v (B, Lk, d); mask (Lq, Lk) or (B, Lq, Lk), additive."""
    b, lq, d = q.shape
    q, k, v = (t.reshape(b, t.shape[1], heads, d // heads).transpose(1, 2) for t in (q, k, v))
    if mask is not None:
        mask = mask.to(q.dtype)
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)  # (B, 1, Lq, Lk) broadcast over heads
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, lq, d)


def _finish(block: nn.Module, residual: Tensor, attended: Tensor) -> Tensor:
    """Output projection, residual, MLP: the rest of the block after attention."""
    out = F.linear(attended, block.attn.out_proj.weight, block.attn.out_proj.bias)
    x = residual + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def block_forward(block: nn.Module, x: Tensor, attn_mask: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
    """`block(x, attn_mask=attn_mask)`; with `rows` (B,) indices, returns only those rows: (B, 1, d).

    attn_mask is open_clip's additive float mask (L, L) (the causal text mask) or None.
    """
    if not is_standard(block):
        out = block(x, attn_mask=attn_mask)
        return out if rows is None else _pick(out, rows)
    residual, q, k, v = _project(block, x, block.ln_1(x), rows)
    mask = attn_mask if rows is None or attn_mask is None else attn_mask[rows].unsqueeze(1)  # (B, 1, L) rows
    return _finish(block, residual, _attend(q, k, v, mask, block.attn.num_heads))


def shared_prefix_block_forward(block: nn.Module, prefix: Tensor, suffix: Tensor, causal_mask: Tensor,
                                rows: Tensor | None = None) -> tuple[Tensor | None, Tensor]:
    """One causal block over rows whose first P positions are identical.

    `prefix` (1, P, d) holds those positions once, `suffix` (R, S, d) the rest of every row, and
    causal_mask is the (P + S, P + S) additive mask. Returns the new (prefix, suffix); with `rows`
    (R,) suffix indices, the last-block form (None, (R, 1, d)) holding only those rows.
    """
    r, p = suffix.shape[0], prefix.shape[1]
    if not is_standard(block):
        out = block(torch.cat([prefix.expand(r, -1, -1), suffix], dim=1), attn_mask=causal_mask)
        return (None, _pick(out, p + rows)) if rows is not None else (out[:1, :p], out[:, p:])
    d, heads = suffix.shape[-1], block.attn.num_heads
    w, bias = block.attn.in_proj_weight, block.attn.in_proj_bias
    h_prefix = block.ln_1(prefix)
    k_prefix, v_prefix = F.linear(h_prefix, w[d:], bias[d:]).chunk(2, dim=-1)
    residual, q, k, v = _project(block, suffix, block.ln_1(suffix), rows)
    mask = causal_mask[p:] if rows is None else causal_mask[p + rows].unsqueeze(1)  # (S, L) or (R, 1, L)
    k = torch.cat([k_prefix.expand(r, -1, -1), k], dim=1)
    v = torch.cat([v_prefix.expand(r, -1, -1), v], dim=1)
    suffix = _finish(block, residual, _attend(q, k, v, mask, heads))
    if rows is not None:
        return None, suffix  # the prefix feeds no later block
    q_prefix = F.linear(h_prefix, w[:d], bias[:d])
    prefix = _finish(block, prefix, _attend(q_prefix, k_prefix, v_prefix, causal_mask[:p, :p], heads))
    return prefix, suffix
