"""The latent student: special embeddings, projection, PCCoT Jacobi passes and the answer pass (docs/design.md §2.2).

The question prefix ``Q <bot>`` is computed once (in the prefill) and its KV reused by every Jacobi pass;
``KV_t`` is read from pass t's own cache; the answer reads ``Q <bot> + KV_T``. In training the answer's tokens ride
in the last pass's decoder call, after the latents: causal attention makes that the same computation in one call less;
and the question's KV can come from the teacher's pass (``question``, a :class:`Prefix`), which ran the same weights
over the same tokens at the same positions, so that the prefill computes only ``<bot>`` and the placeholders.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from kava.model.cache import KV, Prefix, cache_from, cache_kw, cache_of, layer_kv, slice_kv, stack_kv


class Projection(nn.Module):
    """``prj``: Linear(D, D') -> GELU -> Linear(D', D) -> LayerNorm(D)."""

    def __init__(self, hidden: int, proj_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden, proj_dim), nn.GELU(), nn.Linear(proj_dim, hidden), nn.LayerNorm(hidden)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class StudentOutput:
    latent_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per Jacobi pass t: (K_t, V_t), each (L, B, H, M, d)
    latents: list[torch.Tensor]  # z^0 .. z^T, each (B, M, D): the inputs of pass t are latents[t-1]
    answer_logits: torch.Tensor  # (B, 1 + La, V): answer pass over <eot> P A EOS
    answer_hidden: tuple[torch.Tensor, ...]  # L + 1 tensors (B, 1 + La, D); [0] = input embeddings


@dataclass
class Rollout:
    """What the latents' passes leave for the answer pass, and what they computed on the way."""

    cache: DynamicCache  # Q <bot> + the latents' KV (what the answer reads), then the tail's KV if one rode along
    latent_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per Jacobi pass t: (K_t, V_t), each (L, B, H, M, d)
    latents: list[torch.Tensor]  # the latents (B, M, D): Jacobi z^0..z^T; sequential: the M inputs
    hidden: list[torch.Tensor]  # per pass, the latents' last-layer states after the final norm (B, M, D)
    passes: int  # forward passes spent on the question and the latents
    tail: TailOutput | None = None  # the decoder's states at the tail's rows, when a tail rode along


@dataclass
class Tail:
    """Tokens that ride after the latents in the rollout's last decoder call, at the answer's positions: the answer
    ``<eot> P A EOS`` in training."""

    embeds: torch.Tensor  # (B, n, D)
    mask: torch.Tensor  # (B, n)
    hidden_states: bool = False  # keep every layer's states at its rows (the CODI term); decoding needs none


@dataclass
class TailOutput:
    last_hidden: torch.Tensor  # (B, n, D), after the final norm
    mask: torch.Tensor  # (B, cache + every row of the call): what a token after the tail extends
    positions: torch.Tensor  # (B, n): the tail's position ids
    hidden: tuple[torch.Tensor, ...]  # L + 1 tensors (B, n, D), [0] = input embeddings; () unless asked for


def decoder_of(model: PreTrainedModel) -> nn.Module:
    """The transformer stack (final norm included, no LM head) of a causal LM."""
    return model.get_decoder()


def pad_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding: each real token's index among the real tokens."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class LatentStudent(nn.Module):
    """Owns ``<bot>``, ``<eot>``, the latent placeholder and ``prj``; runs the student passes on a backbone."""

    BOT, EOT, PH = 0, 1, 2

    def __init__(
        self,
        hidden_size: int,
        num_tokens: int,
        num_iterations: int,
        use_projection: bool = True,
        proj_dim: int | None = None,
        init_embedding: torch.Tensor | None = None,
        output_scale: float | None = None,
        align_positions: bool = False,
    ) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"latent.num_tokens must be >= 1, got {num_tokens}")
        if num_iterations < 0:
            raise ValueError(f"latent.num_iterations must be >= 0 (0 = pause tokens), got {num_iterations}")
        self.num_tokens = num_tokens
        self.num_iterations = num_iterations
        self.align_positions = align_positions
        init = torch.zeros(hidden_size) if init_embedding is None else init_embedding.detach().float().clone()
        self.special = nn.Parameter(init[None].repeat(3, 1))
        self.prj: nn.Module = Projection(hidden_size, proj_dim or hidden_size) if use_projection else nn.Identity()
        if output_scale is not None and use_projection:  # latents enter at this per-element RMS, not 1
            with torch.no_grad():
                self.prj.net[-1].weight.fill_(float(output_scale))

    def place(self, pos: torch.Tensor, specials: int) -> torch.Tensor:
        """Position ids of tokens that follow ``specials`` of ``<bot>``/``<eot>``: with ``latent.align_positions`` the
        special tokens take no position of their own (each shares the next token's), so latent j sits at the
        position of the teacher's CoT token j and, when M is the CoT's length, ``P A`` at the teacher's positions
        too (docs/study.md: a teacher whose CoT moves by one position loses a position-addressed task)."""
        return pos - specials if self.align_positions else pos

    def answer_positions(self, pos: torch.Tensor) -> torch.Tensor:
        """Positions of ``<eot> P A ...`` (``pos`` as counted over every token): one special token before ``<eot>``,
        two before the rest."""
        return torch.cat([self.place(pos[:, :1], 1), self.place(pos[:, 1:], 2)], dim=1)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return self.prj(h.to(self.special.dtype)).to(h.dtype)

    def special_embed(self, which: int, batch: int, dtype: torch.dtype) -> torch.Tensor:
        return self.special[which].to(dtype).expand(batch, 1, -1)

    def decode(
        self,
        model: PreTrainedModel,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        pos: torch.Tensor,
        cache: DynamicCache | None = None,
        tail: Tail | None = None,
    ):
        """One decoder call over ``embeds`` at ``pos`` (``mask`` covers the cache and them), followed, when given, by
        the ``tail`` at the answer's positions; returns the output, the last hidden states of ``embeds``' rows and the
        tail's states (or None)."""
        n = embeds.shape[1]
        if tail is not None:
            mask = torch.cat([mask, tail.mask], dim=1)
            tail_pos = self.answer_positions(pad_positions(mask)[:, -tail.embeds.shape[1] :])
            embeds, pos = torch.cat([embeds, tail.embeds], dim=1), torch.cat([pos, tail_pos], dim=1)
        out = decoder_of(model)(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            output_hidden_states=tail is not None and tail.hidden_states,
            **cache_kw(cache),
        )
        h = out.last_hidden_state
        if tail is None:
            return out, h, None
        hidden = tuple(x[:, n:] for x in out.hidden_states) if tail.hidden_states else ()
        return out, h[:, :n], TailOutput(h[:, n:], mask, tail_pos, hidden)

    def opening(
        self,
        model: PreTrainedModel,
        q_ids: torch.Tensor,
        q_mask: torch.Tensor,
        rows: torch.Tensor,
        question: Prefix | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, DynamicCache | None]:
        """The first decoder call of a rollout: its embeddings, mask (cache and rows), positions and cache. ``Q``
        followed by ``rows`` (B, n, D); given the question's KV (``question``), ``rows`` alone on a cache of it."""
        bsz, n = rows.shape[:2]
        if question is None:
            mask = torch.cat([q_mask, q_mask.new_ones(bsz, n)], dim=1)
            embeds = torch.cat([model.get_input_embeddings()(q_ids), rows], dim=1)
            return embeds, mask, pad_positions(mask), None
        if question.mask.shape[1] != q_ids.shape[1]:  # the prefix and latents' columns are counted from q_ids
            raise ValueError(f"the shared question has {question.mask.shape[1]} columns, the batch's {q_ids.shape[1]}")
        mask = torch.cat([question.mask, question.mask.new_ones(bsz, n)], dim=1)
        return rows, mask, pad_positions(mask)[:, -n:], cache_from(question.kv, model.config)

    def _placeholder_forward(
        self,
        model: PreTrainedModel,
        q_ids: torch.Tensor,
        q_mask: torch.Tensor,
        tail: Tail | None = None,
        question: Prefix | None = None,
    ):
        """One pass over ``Q <bot> ph..ph`` (M placeholders; ``Q`` from ``question``'s cache when given) and the
        ``tail``; the output states returned are those of ``<bot> ph..ph``."""
        bsz, m = q_ids.shape[0], self.num_tokens
        dtype = model.get_input_embeddings().weight.dtype
        ph = self.special_embed(self.PH, bsz, dtype).expand(bsz, m, -1)
        rows = torch.cat([self.special_embed(self.BOT, bsz, dtype), ph], dim=1)
        embeds, mask, pos, cache = self.opening(model, q_ids, q_mask, rows, question)
        pos = torch.cat([pos[:, :-m], self.place(pos[:, -m:], 1)], dim=1)
        out, h, tail_out = self.decode(model, embeds, mask, pos, cache, tail)
        return out, h[:, -(1 + m) :], tail_out

    def prefill(
        self, model: PreTrainedModel, q_ids: torch.Tensor, q_mask: torch.Tensor, question: Prefix | None = None
    ) -> tuple[KV, torch.Tensor]:
        """Run ``Q <bot> ph..ph``; return the KV of ``Q <bot>`` (in ``question``'s layout when given) and the initial
        latents z^0 (B, M, D)."""
        q_len, m = q_ids.shape[1], self.num_tokens
        out, h, _ = self._placeholder_forward(model, q_ids, q_mask, question=question)
        z0 = self.project(h[:, :m])  # h(<bot>), h(ph_1) .. h(ph_{M-1})
        prefix = slice_kv(layer_kv(cache_of(out)), 0, q_len + 1)
        return prefix, z0

    def jacobi_pass(
        self, model: PreTrainedModel, prefix: KV, prefix_mask: torch.Tensor, z: torch.Tensor, tail: Tail | None = None
    ):
        """One parallel pass of the M latents (and the ``tail`` after them) on the prefix cache; returns (next z,
        cache, the latents' last hidden states, the tail's states or None)."""
        bsz, m, _ = z.shape
        mask = torch.cat([prefix_mask, prefix_mask.new_ones(bsz, m)], dim=1)
        pos = self.place(pad_positions(mask)[:, -m:], 1)
        out, h, tail_out = self.decode(model, z, mask, pos, cache_from(prefix, model.config), tail)
        z_next = torch.cat([z[:, :1], self.project(h[:, :-1])], dim=1)
        return z_next, cache_of(out), h, tail_out

    def rollout(
        self,
        model: PreTrainedModel,
        q_ids: torch.Tensor,
        q_mask: torch.Tensor,
        placeholder: bool = False,
        tail: Tail | None = None,
        question: Prefix | None = None,
    ) -> Rollout:
        """Prefill and T Jacobi passes (recording ``KV_t`` of each): the cache ``Q <bot> + KV_T`` the answer reads
        (followed by the ``tail``'s KV when a tail rides in the last pass). Given ``question`` (the question's KV
        over ``q_ids.shape[1]`` columns, e.g. the teacher's), ``Q`` is read from it instead of being run again.

        T = 0 (or ``placeholder=True``, the ablation) is the pause-token control: one pass over ``Q <bot>`` and M
        placeholders, whose KV the answer sees.
        """
        if self.num_iterations == 0 or placeholder:  # the placeholders' own KV, no projection, no update
            out, _, tail_out = self._placeholder_forward(model, q_ids, q_mask, tail, question)
            return Rollout(cache_of(out), [], [], [], 1, tail_out)
        m, n_prefix = self.num_tokens, q_ids.shape[1] + 1
        q_cols = q_mask if question is None else question.mask
        prefix_mask = torch.cat([q_cols, q_cols.new_ones(q_ids.shape[0], 1)], dim=1)
        prefix, z = self.prefill(model, q_ids, q_mask, question)
        latents, latent_kv, hidden = [z], [], []
        for i in range(self.num_iterations):
            last = i == self.num_iterations - 1
            z, cache, h, tail_out = self.jacobi_pass(model, prefix, prefix_mask, latents[-1], tail if last else None)
            latent_kv.append(stack_kv(slice_kv(layer_kv(cache), n_prefix, n_prefix + m)))
            latents.append(z)
            hidden.append(h)
        return Rollout(cache, latent_kv, latents, hidden, 1 + self.num_iterations, tail_out)

    def forward(
        self,
        model: PreTrainedModel,
        q_ids: torch.Tensor,
        q_mask: torch.Tensor,
        a_ids: torch.Tensor,
        a_mask: torch.Tensor,
        question: Prefix | None = None,
    ) -> StudentOutput:
        """The latents' rollout with the answer ``<eot> P A EOS`` riding in its last decoder call (it reads
        ``Q <bot> + KV_T``); ``Q`` from ``question``'s KV when given (see ``rollout``)."""
        a_emb = model.get_input_embeddings()(a_ids)
        embeds = torch.cat([self.special_embed(self.EOT, q_ids.shape[0], a_emb.dtype), a_emb], dim=1)
        mask = torch.cat([a_mask.new_ones(a_mask.shape[0], 1), a_mask], dim=1)
        r = self.rollout(model, q_ids, q_mask, tail=Tail(embeds, mask, hidden_states=True), question=question)
        assert r.tail is not None  # every rollout runs the tail in its last call
        logits = model.get_output_embeddings()(r.tail.last_hidden)
        return StudentOutput(r.latent_kv, r.latents, logits, r.tail.hidden)


class SequentialStudent(LatentStudent):
    """CODI's latents: one latent per pass on a growing cache, ``z_{m+1} = prj(h(z_m))``, ``z_0 = prj(h(<bot>))``.

    The result equals the Jacobi student run with T = M (Jacobi converges one latent per pass), at M one-token
    passes instead of M passes over M tokens. ``num_iterations`` is M (the passes the latents cost).
    """

    def __init__(self, hidden_size: int, num_tokens: int, **kwargs) -> None:
        kwargs.pop("num_iterations", None)
        super().__init__(hidden_size, num_tokens, num_tokens, **kwargs)

    def rollout(
        self,
        model: PreTrainedModel,
        q_ids: torch.Tensor,
        q_mask: torch.Tensor,
        placeholder: bool = False,
        tail: Tail | None = None,
        question: Prefix | None = None,
    ) -> Rollout:
        if placeholder:
            return super().rollout(model, q_ids, q_mask, placeholder=True, tail=tail, question=question)
        bsz, m = q_ids.shape[0], self.num_tokens
        bot = self.special_embed(self.BOT, bsz, model.get_input_embeddings().weight.dtype)
        embeds, mask, pos, cache = self.opening(model, q_ids, q_mask, bot, question)
        out, h, _ = self.decode(model, embeds, mask, pos, cache)
        z = self.project(h[:, -1:])
        cache, inputs, hidden, tail_out = cache_of(out), [], [], None
        for i in range(m):
            mask = torch.cat([mask, mask.new_ones(bsz, 1)], dim=1)
            pos = self.place(pad_positions(mask)[:, -1:], 1)
            out, h, tail_out = self.decode(model, z, mask, pos, cache, tail if i == m - 1 else None)
            cache = cache_of(out)
            inputs.append(z)
            hidden.append(h)
            if i < m - 1:  # the last latent's output feeds nothing
                z = self.project(h)
        n_prefix = q_ids.shape[1] + 1
        latent_kv = [stack_kv(slice_kv(layer_kv(cache), n_prefix, n_prefix + m))]
        return Rollout(cache, latent_kv, [torch.cat(inputs, dim=1)], [torch.cat(hidden, dim=1)], 1 + m, tail_out)
