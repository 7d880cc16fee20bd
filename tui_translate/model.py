"""The encoder-decoder Transformer.

The model offers three entry points and owns no decoding loop (that is `search.py`):

* `encode(src)` -> `EncoderOutput` (memory, source mask, optional self-attention);
* `start_cache(encoded)` -> `KVCache` with the cross-attention keys/values computed once,
  then `decode_step(tokens, cache)` -> logits of the new positions (+ optional attention);
* `forward(src, tgt_in)` -> logits for teacher-forced training.

Each runs through the modules with nn.Linear's arithmetic: the path training differentiates and the
oracle the tests hold the inference engine to. Decoding for users goes through `engine.InferenceEngine`,
which offers the same three calls on packed weights (passed here as `packed`) through a fused encoder and
decoder step.

Shapes: B batch, S source length, T target length, D d_model, H heads, L layers, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import key_padding_mask
from .cache import KVCache
from .config import ModelConfig
from .layers import DecoderLayer, EncoderLayer, embedding_scale, sinusoidal_positions
from .linear import PackedWeights, project


@dataclass
class EncoderOutput:
    memory: Tensor  # (B, S, D)
    source_mask: Tensor  # (B, S) bool, True at real tokens
    self_attention: Tensor | None = None  # (B, L, H, S, S) on the capture path


@dataclass
class StepOutput:
    logits: Tensor | None  # (N, T_new, V); None when the caller asked for `hidden` instead
    self_attention: Tensor | None = None  # (N, L, H, T_new, T_past + T_new)
    cross_attention: Tensor | None = None  # (N, L, H, T_new, S)
    hidden: Tensor | None = None  # (N, T_new, D) the states the output layer reads, when logits were not computed


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.src_embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_id)
        self.tgt_embed = self.src_embed if c.share_embeddings else nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_id)
        self.register_buffer(
            "positions", sinusoidal_positions(c.max_positions, c.d_model, c.position_layout), persistent=False
        )  # (P, D)
        self.encoder_layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.n_encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.n_decoder_layers))
        pre = c.norm_placement == "pre"
        self.encoder_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if pre else nn.Identity()
        self.decoder_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if pre else nn.Identity()
        self.output_proj = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_output:
            self.output_proj.weight = self.tgt_embed.weight
        if c.final_logits_bias:
            self.register_buffer("logits_bias", torch.zeros(1, c.vocab_size))  # (1, V), Marian's final_logits_bias
        else:
            self.logits_bias = None
        self.scale = embedding_scale(c)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        d = self.config.d_model
        nn.init.normal_(self.src_embed.weight, 0.0, d**-0.5)
        if not self.config.share_embeddings:
            nn.init.normal_(self.tgt_embed.weight, 0.0, d**-0.5)
        with torch.no_grad():
            self.src_embed.weight[self.config.pad_id].zero_()
            self.tgt_embed.weight[self.config.pad_id].zero_()

    def scale_branch_init(self) -> tuple[float, float]:
        """DeepNet's initialisation (Wang et al. 2022, "DeepNet: Scaling Transformers to 1,000 Layers") without
        its residual up-weighting, so the architecture (and the Marian export) is unchanged: the value and
        output projections of every attention and both feed-forward products start scaled by beta,
        encoder beta = 0.87 (N^4 M)^(-1/16), decoder beta = (12 M)^(-1/4) for N encoder and M decoder layers.

        Why: attention starts out nearly uniform, so each branch adds about the mean of its positions; with
        Xavier-sized branches post-norm renormalises after every sublayer and a deep encoder's positions start
        nearly identical, a state training then deepened into a constant encoder (docs/training.md). Small
        branches start every layer near the identity. Returns the two betas."""
        n, m = self.config.n_encoder_layers, self.config.n_decoder_layers
        enc_beta = 0.87 * (n**4 * m) ** (-1 / 16)
        dec_beta = (12 * m) ** (-1 / 4)
        branch = ("v_proj.weight", "out_proj.weight", "fc1.weight", "fc2.weight")
        with torch.no_grad():
            for layers, beta in ((self.encoder_layers, enc_beta), (self.decoder_layers, dec_beta)):
                for name, p in layers.named_parameters():
                    if name.endswith(branch):
                        p.mul_(beta)
        return enc_beta, dec_beta

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- embeddings ---------------------------------------------------------------------------
    def _embed(self, table: nn.Embedding, ids: Tensor, offset: int = 0) -> Tensor:
        """ids: (B, T) -> scaled token embeddings + sinusoidal positions offset..offset+T, (B, T, D)."""
        t = ids.size(1)
        if offset + t > self.config.max_positions:
            raise ValueError(f"sequence of {offset + t} positions exceeds max_positions={self.config.max_positions}")
        x = table(ids) * self.scale + self.positions[offset : offset + t]  # (B, T, D)
        if self.training and self.config.dropout > 0:
            x = F.dropout(x, self.config.dropout)
        return x

    def logits(self, h: Tensor, packed: PackedWeights | None = None) -> Tensor:
        """Final linear layer: (…, D) -> (…, V). Softmax is applied by the caller (loss or search)."""
        return project(h, self.output_proj, packed=packed, extra_bias=self.logits_bias, output_layer=True)  # (…, V)

    # -- encoder ------------------------------------------------------------------------------
    def encode(self, src: Tensor, need_weights: bool = False, packed: PackedWeights | None = None) -> EncoderOutput:
        """src: (B, S) token ids, padded with pad_id. Returns memory (B, S, D) and optionally
        the encoder self-attention of every layer stacked as (B, L, H, S, S).
        packed (here and below): inference weights to multiply with (None: nn.Linear's arithmetic)."""
        source_mask = src.ne(self.config.pad_id)  # (B, S)
        mask = key_padding_mask(source_mask)  # (B, 1, 1, S) | None
        x = self._embed(self.src_embed, src)
        weights = []
        for layer in self.encoder_layers:
            x, w = layer(x, mask, need_weights, packed)
            weights.append(w)
        x = self.encoder_norm(x)
        stacked = torch.stack(weights, dim=1) if need_weights else None  # (B, L, H, S, S)
        return EncoderOutput(x, source_mask, stacked)

    # -- incremental decoder --------------------------------------------------------------------
    def start_cache(self, encoded: EncoderOutput, capacity: int, packed: PackedWeights | None = None) -> KVCache:
        """Compute the cross-attention keys/values once (all layers in one product) and allocate the
        self-attention buffers."""
        c = self.config
        n, s, _ = encoded.memory.shape
        projections = [lin for layer in self.decoder_layers for lin in (layer.cross_attn.k_proj, layer.cross_attn.v_proj)]
        kv = project(encoded.memory, *projections, packed=packed)  # every layer's keys and values in one product, (N, S, L*2*D)
        kv = kv.view(n, s, c.n_decoder_layers, 2, c.n_heads, c.d_model // c.n_heads)  # (N, S, L, 2, H, d_k)
        cross = kv.permute(2, 3, 0, 4, 1, 5).contiguous()  # (L, 2, N, H, S, d_k)
        return KVCache.create(cross, encoded.source_mask, capacity)

    def decode_step(self, tokens: Tensor, cache: KVCache, need_weights: bool = False,
                    packed: PackedWeights | None = None, logits: bool = True) -> StepOutput:
        """tokens: (N, T_new) the next decoder inputs (usually T_new = 1; a forced prefix or a draft
        feeds several at once). Returns logits (N, T_new, V) and, on the capture path, the self-attention
        (N, L, H, T_new, T_past+T_new) and cross-attention (N, L, H, T_new, S) of the new positions.
        logits=False: `hidden` (N, T_new, D) instead, for the caller to run the output layer (`logits`) on the
        positions it needs, one position (N, D) at a time as a one-token step does."""
        x = self._embed(self.tgt_embed, tokens, offset=cache.length)  # (N, T_new, D)
        self_ws, cross_ws = [], []
        for i, layer in enumerate(self.decoder_layers):
            x, sw, cw = layer.step(x, cache, i, need_weights, packed)
            self_ws.append(sw)
            cross_ws.append(cw)
        cache.advance(tokens.size(1))
        hidden = self.decoder_norm(x)  # (N, T_new, D)
        out = self.logits(hidden, packed) if logits else None  # (N, T_new, V)
        if not need_weights:
            return StepOutput(out, hidden=None if logits else hidden)
        return StepOutput(out, torch.stack(self_ws, 1), torch.stack(cross_ws, 1), None if logits else hidden)

    # -- teacher forcing ----------------------------------------------------------------------
    def decode(
        self, tgt_in: Tensor, encoded: EncoderOutput, need_weights: bool = False, packed: PackedWeights | None = None
    ) -> StepOutput:
        """Full teacher-forced decoder pass. tgt_in: (B, T) starting with decoder_start_id."""
        x = self._embed(self.tgt_embed, tgt_in)  # (B, T, D)
        mask = key_padding_mask(encoded.source_mask)  # (B, 1, 1, S) | None
        self_ws, cross_ws = [], []
        for layer in self.decoder_layers:
            x, sw, cw = layer(x, encoded.memory, mask, need_weights, packed)
            self_ws.append(sw)
            cross_ws.append(cw)
        logits = self.logits(self.decoder_norm(x), packed)  # (B, T, V)
        if not need_weights:
            return StepOutput(logits)
        return StepOutput(logits, torch.stack(self_ws, 1), torch.stack(cross_ws, 1))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Training: src (B, S), tgt_in (B, T) -> logits (B, T, V)."""
        return self.decode(tgt_in, self.encode(src)).logits
