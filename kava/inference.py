"""Batched, KV-cached greedy decoding for the latent student and the CoT teacher (docs/design.md §2.6).

Every pass gets a 2-D mask over past+new tokens and pad-aware positions, so a question decodes the same
alone or in a batch. Forward passes are counted per question: latent decoding costs
``1 (prefill) + T (Jacobi, <eot> P riding in the last) + (generated tokens - 1)``; CoT decoding
``1 + (generated - 1)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from kava.model.cache import cache_kw, cache_of
from kava.model.student import LatentStudent, Tail, decoder_of, pad_positions

Sync = Callable[[bool], bool]  # this rank's "done" -> every rank's "done" (see _greedy)


@dataclass
class Generation:
    tokens: list[list[int]]  # generated ids per question, the stop token (EOS/newline) included
    texts: list[str]  # decoded generated text, EOS dropped
    forward_passes: list[int]


def encode_questions(tokenizer, questions: Sequence[str], device: torch.device | str = "cpu"):
    """Left-padded question ids and mask (BOS as the tokenizer adds it)."""
    ids = [tokenizer(q)["input_ids"] for q in questions]
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id
    q_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)
    q_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
    return q_ids, q_mask


def stop_token_ids(tokenizer) -> set[int]:
    """EOS and every token whose text contains a newline."""
    stops = {tokenizer.eos_token_id}
    for tok, idx in tokenizer.get_vocab().items():
        if "\n" in tokenizer.convert_tokens_to_string([tok]):
            stops.add(idx)
    return stops


def _greedy(
    model: PreTrainedModel,
    logits: torch.Tensor,
    cache,
    mask: torch.Tensor,
    next_pos: torch.Tensor,
    stops: set[int],
    max_new_tokens: int,
    pad_id: int,
    sync: Sync | None = None,
) -> tuple[list[list[int]], list[int]]:
    """Greedy tokens from ``logits`` (B, V) on; returns tokens per row and the passes spent after the first.

    ``sync`` turns "this rank's rows are done" into "every rank's rows are done" (an all-reduce): under sharded
    strategies every rank must run the same number of forward passes, so a finished rank feeds padding until all
    have finished."""
    bsz = logits.shape[0]
    tokens: list[list[int]] = [[] for _ in range(bsz)]
    done = [False] * bsz
    extra = [0] * bsz
    stop_t = torch.tensor(sorted(stops), device=logits.device)
    for step in range(max_new_tokens):
        nxt = logits.argmax(-1)
        is_stop = torch.isin(nxt, stop_t).tolist()
        for b, t in enumerate(nxt.tolist()):
            if not done[b]:
                tokens[b].append(t)
                done[b] = is_stop[b] or len(tokens[b]) >= max_new_tokens
        finished = all(done)
        if sync is not None:
            finished = sync(finished)
        if finished or step == max_new_tokens - 1:
            break
        for b in range(bsz):
            if not done[b]:
                extra[b] += 1
        feed = torch.where(torch.tensor(done, device=nxt.device), torch.full_like(nxt, pad_id), nxt)
        mask = torch.cat([mask, mask.new_ones(bsz, 1)], dim=1)
        inputs = {"input_ids": feed[:, None], "attention_mask": mask, "position_ids": next_pos[:, None]}
        out = decoder_of(model)(**inputs, **cache_kw(cache), use_cache=True)
        cache, next_pos = cache_of(out), next_pos + 1
        logits = model.get_output_embeddings()(out.last_hidden_state[:, -1]).float()
    return tokens, extra


def _texts(tokenizer, tokens: list[list[int]]) -> list[str]:
    return [tokenizer.decode([t for t in row if t != tokenizer.eos_token_id]) for row in tokens]


@torch.no_grad()
def latent_generate(
    student: LatentStudent,
    model: PreTrainedModel,
    tokenizer,
    q_ids: torch.Tensor,
    q_mask: torch.Tensor,
    prompt: str,
    max_new_tokens: int = 16,
    stops: set[int] | None = None,
    placeholder_latents: bool = False,
    sync: Sync | None = None,
) -> Generation:
    """The latents' rollout (prefill and T Jacobi passes, or sequential latents) with ``<eot> P`` riding in its last
    pass, then greedy answer tokens from the KV cache: 1 + T + (tokens - 1) forward passes.

    ``placeholder_latents=True`` is the ablation "does the answer use what the latents hold?": the M latents stay
    the placeholder embedding (one pass over ``Q <bot> ph..ph``, no projection, no Jacobi update), so the answer
    pass sees their KV instead of ``KV_T``; it costs 1 + (tokens - 1) passes, as a pause-token student (T = 0).
    """
    bsz = q_ids.shape[0]
    p_ids = torch.tensor(tokenizer(" " + prompt, add_special_tokens=False)["input_ids"], device=q_ids.device)
    p_emb = model.get_input_embeddings()(p_ids)[None].expand(bsz, -1, -1)
    embeds = torch.cat([student.special_embed(student.EOT, bsz, p_emb.dtype), p_emb], dim=1)
    tail = Tail(embeds, q_mask.new_ones(bsz, embeds.shape[1]))  # ``<eot> P`` rides in the rollout's last pass
    rollout = student.rollout(model, q_ids, q_mask, placeholder=placeholder_latents, tail=tail)
    assert rollout.tail is not None
    logits = model.get_output_embeddings()(rollout.tail.last_hidden[:, -1]).float()
    tokens, extra = _greedy(
        model,
        logits,
        rollout.cache,
        rollout.tail.mask,
        rollout.tail.positions[:, -1] + 1,
        stops if stops is not None else stop_token_ids(tokenizer),
        max_new_tokens,
        tokenizer.pad_token_id,
        sync,
    )
    passes = [rollout.passes + e for e in extra]
    return Generation(tokens, _texts(tokenizer, tokens), passes)


@torch.no_grad()
def latent_readout(
    student: LatentStudent, model: PreTrainedModel, q_ids: torch.Tensor, q_mask: torch.Tensor, k: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """What each latent "says": the last-layer hidden state (after the final norm) at every latent position of
    every latent pass (the Jacobi steps; one for sequential latents), read through the LM head. Returns top-k token
    ids and probabilities, each (passes, B, M, k); none for pause tokens."""
    hidden = student.rollout(model, q_ids, q_mask).hidden
    if not hidden:
        empty = torch.zeros(0, q_ids.shape[0], student.num_tokens, k, device=q_ids.device)
        return empty.long(), empty
    p = torch.softmax(model.get_output_embeddings()(torch.stack(hidden)).float(), dim=-1).topk(k, dim=-1)
    return p.indices, p.values


@torch.no_grad()
def cot_generate(
    model: PreTrainedModel,
    tokenizer,
    q_ids: torch.Tensor,
    q_mask: torch.Tensor,
    max_new_tokens: int = 256,
    stops: set[int] | None = None,
    sync: Sync | None = None,
) -> Generation:
    """Greedy CoT continuation of the question (the teacher writes ``C P A EOS``) with a KV cache."""
    pos = pad_positions(q_mask)
    out = decoder_of(model)(input_ids=q_ids, attention_mask=q_mask, position_ids=pos, use_cache=True)
    logits = model.get_output_embeddings()(out.last_hidden_state[:, -1]).float()
    tokens, extra = _greedy(
        model,
        logits,
        cache_of(out),
        q_mask,
        pos[:, -1] + 1,
        stops if stops is not None else stop_token_ids(tokenizer),
        max_new_tokens,
        tokenizer.pad_token_id,
        sync,
    )
    return Generation(tokens, _texts(tokenizer, tokens), [1 + e for e in extra])
