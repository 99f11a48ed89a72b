"""Benchmarks of training and inference cost (one process, threads pinned); writes docs/benchmarks.md.

    OMP_NUM_THREADS=2 python bench/run.py [--quick] [--out docs/benchmarks.md]

1. Training step time on the tiny model: ours, a naive formulation built here (question re-run in every
   Jacobi pass, importance from eager ``output_attentions``, the answer in a decoder call of its own), the
   floor (bare forward+backward over the positions ours computes, in two decoder calls; also with the question run
   twice, as a step without ``teacher.share_question`` runs it) and the pass floor (the same, in the decoder calls the
   method's data dependencies force). 2. Growth of our step time with M, T and the CoT
   length. 3. R-KV compression time against a straightforward per-sample/per-head loop, and peak memory of the
   teacher pass (importance capture vs plain SDPA vs eager attention probabilities). 4. Latent against CoT
   decoding at batch 1 and 64.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kava.config import module_sections  # noqa: E402
from kava.data.collate import collate  # noqa: E402
from kava.data.sequences import Segments  # noqa: E402
from kava.data.tokenizer import train_tiny_tokenizer  # noqa: E402
from kava.distill.losses import kv_step_loss, selected_token_ce, target_logits  # noqa: E402
from kava.distill.rkv import compress, redundancy  # noqa: E402
from kava.inference import cot_generate, latent_generate  # noqa: E402
from kava.lit_module import KAVALitModule  # noqa: E402
from kava.model.attention import capture_importance  # noqa: E402
from kava.model.cache import Prefix, cache_from, cache_kw, cache_of, layer_kv, slice_kv, stack_kv  # noqa: E402
from kava.model.student import decoder_of, pad_positions  # noqa: E402
from kava.model.teacher import question_prefix, teacher_forward  # noqa: E402

TINY = {"hidden_size": 128, "intermediate_size": 512, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
        "vocab_size": 512, "max_position_embeddings": 2048}  # fmt: skip
LLAMA3_VOCAB = 128256
BENCH = ["loss.kv_slots=all", "optim.lr=1e-3", "optim.weight_decay=0.0", "model.lora.r=16", "loss.alpha1=10.0"]
# on the default config; LoRA r16 and the CODI term pinned (the embedded default's recipe fully fine-tunes without CODI)


def make_module(
    tokenizer,
    m: int,
    t: int,
    method: str = "kava",
    tiny: dict | None = None,
    compiled: bool | str = False,
    overrides: list[str] | None = None,
) -> KAVALitModule:
    """The bench model: the composed default config with ``method``, M, T and the ``TINY`` shape (``model.compile``
    with ``compiled``: false, true / ``decoder`` or ``step``), then ``overrides``."""
    overrides = [*BENCH, f"method={method}", f"latent.num_tokens={m}", f"latent.num_iterations={t}", *(overrides or [])]
    overrides.append(f"model.compile={str(compiled).lower()}")
    overrides += [f"model.tiny.{k}={v}" for k, v in (tiny or TINY).items()]
    torch.manual_seed(0)
    return KAVALitModule(**module_sections(overrides), tokenizer=tokenizer)


def bench_tokenizer():
    """The bench scripts' tokenizer: BPE trained offline on 300 templated arithmetic lines, ``TINY``'s vocabulary."""
    corpus = [f"Ann has {i} boxes with {i + 3} pens each. <<{i}*{i + 3}={i * (i + 3)}>>" for i in range(300)]
    return train_tiny_tokenizer(corpus, vocab_size=TINY["vocab_size"])


def synthetic_batch(bsz: int, q_len: int, cot_len: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random-token samples with the given question and CoT lengths (questions vary by +-25%)."""
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> tuple[int, ...]:
        return tuple(torch.randint(3, vocab, (n,), generator=g).tolist())

    samples = []
    for i in range(bsz):
        nq = max(4, q_len - (i % 4) * q_len // 8)
        samples.append(Segments((1, *ids(nq - 1)), ids(cot_len), ids(4), (*ids(3), 2), 0.0))
    return collate(samples, 0)


def timeit(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- the naive formulation, built here only for comparison --------------------------------------------
def eager_importance(model, batch) -> torch.Tensor:
    """Importance from eager attention probabilities (B, H_q, S, S) per layer, as the peers compute it."""
    out = model(input_ids=batch.t_ids, attention_mask=batch.t_mask, position_ids=batch.t_pos,
                output_attentions=True, output_hidden_states=True, use_cache=True)  # fmt: skip
    rows, row_mask = batch.t_ans_rows, batch.t_ans_mask.float()
    imps = []
    for att in out.attentions:
        bsz, hq, s, _ = att.shape
        picked = att.gather(2, rows[:, None, :, None].expand(bsz, hq, rows.shape[1], s))
        h = model.config.num_key_value_heads
        pooled = picked.view(bsz, h, hq // h, rows.shape[1], s).amax(2)
        imps.append((pooled * row_mask[:, None, :, None]).sum(2) / row_mask.sum(-1).clamp(min=1)[:, None, None])
    return out, torch.stack(imps).detach()


def naive_step(module: KAVALitModule, batch) -> torch.Tensor:
    model, st = module.backbone, module.student
    model.set_attn_implementation("eager")
    try:
        out, importance = eager_importance(model, batch)
    finally:
        model.set_attn_implementation("kava_sdpa")
    keys, values = stack_kv(layer_kv(cache_of(out)))
    target = compress(keys.detach(), values.detach(), importance, batch.cot_start, batch.cot_len, st.num_tokens, 0.1)
    ce = torch.nn.functional.cross_entropy(out.logits.transpose(1, 2), batch.t_targets, ignore_index=-100)
    q_ids, q_mask = batch.s_q_ids, batch.s_q_mask
    bsz, m = q_ids.shape[0], st.num_tokens
    _, z = st.prefill(model, q_ids, q_mask)
    q_emb = model.get_input_embeddings()(q_ids)
    mask = torch.cat([q_mask, q_mask.new_ones(bsz, 1 + m)], 1)
    loss = ce
    for _ in range(st.num_iterations):  # the question is re-run in every pass
        emb = torch.cat([q_emb, st.special_embed(st.BOT, bsz, q_emb.dtype), z], 1)
        o = decoder_of(model)(inputs_embeds=emb, attention_mask=mask, position_ids=pad_positions(mask), use_cache=True)
        k_t, v_t = stack_kv(slice_kv(layer_kv(cache_of(o)), -m))
        loss = loss + kv_step_loss(k_t, v_t, target.keys, target.values, target.mask, "smooth_l1", False)[0]
        h = o.last_hidden_state[:, -m:]
        z = torch.cat([z[:, :1], st.project(h[:, :-1])], 1)
        cache = cache_of(o)
    a_emb = model.get_input_embeddings()(batch.s_a_ids)
    emb = torch.cat([st.special_embed(st.EOT, bsz, a_emb.dtype), a_emb], 1)
    amask = torch.cat([mask, batch.s_a_mask.new_ones(bsz, 1), batch.s_a_mask], 1)
    pos = pad_positions(amask)[:, -emb.shape[1] :]
    o = decoder_of(model)(inputs_embeds=emb, attention_mask=amask, position_ids=pos, **cache_kw(cache), use_cache=True)
    logits = model.get_output_embeddings()(o.last_hidden_state)
    loss = loss + torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch.s_targets, ignore_index=-100)
    loss.backward()
    return loss


def our_step(module: KAVALitModule, batch) -> torch.Tensor:
    loss = module.compute_losses(batch)["loss"]
    loss.backward()
    return loss


def bare_teacher_ce(model, batch, question: bool = False) -> tuple[torch.Tensor, Prefix | None]:
    """The floors' teacher part: one plain decoder call over the teacher sequence, the CE at its target positions;
    with ``question``, also the question's KV for the student call (as ``teacher.share_question`` hands it over)."""
    out = decoder_of(model)(input_ids=batch.t_ids, attention_mask=batch.t_mask, use_cache=True)
    logits = target_logits(model.get_output_embeddings(), out.last_hidden_state, batch.t_target_rows)
    ce = selected_token_ce(logits, batch.t_targets, batch.t_target_rows)[0]
    return ce, question_prefix(layer_kv(cache_of(out)), batch) if question else None


def student_call(model, n: int, batch, question: Prefix | None, **kwargs):
    """One bare decoder call over ``n`` new positions of the student: after the question's cache when given, else
    at the start of a sequence (the question's own tokens then among the ``n``)."""
    bsz = batch.s_q_ids.shape[0]
    x = kwargs.pop("inputs_embeds", None)
    ids = None if x is not None else batch.t_ids.new_full((bsz, n), 5)
    if question is None:
        return decoder_of(model)(input_ids=ids, inputs_embeds=x, **kwargs)
    mask = torch.cat([question.mask, question.mask.new_ones(bsz, n)], 1)
    return decoder_of(model)(input_ids=ids, inputs_embeds=x, attention_mask=mask,
                             position_ids=pad_positions(mask)[:, -n:], use_cache=True,
                             **cache_kw(cache_from(question.kv, model.config)), **kwargs)  # fmt: skip


def floor_step(module: KAVALitModule, batch, question_twice: bool = False) -> torch.Tensor:
    """The floor: a bare forward and backward over the positions our step computes (``floor_loss``)."""
    loss = floor_loss(module, batch, question_twice)
    loss.backward()
    return loss


def floor_loss(module: KAVALitModule, batch, question_twice: bool = False) -> torch.Tensor:
    """The floor's forward over the positions our step computes, in two plain decoder calls, with the LM head where
    ours takes it: the teacher's target positions and the student's ``<eot> P A EOS``. When the method shares the
    question (``teacher.share_question``), the student call reads the teacher call's question KV as ours does;
    ``question_twice`` runs the question again in the student call instead (what a step without sharing computes)."""
    model, st = module.backbone, module.student
    share = module.method.share_question and not question_twice
    loss, question = bare_teacher_ce(model, batch, share)
    na = 1 + batch.s_a_ids.shape[1]
    n = (0 if share else batch.s_q_ids.shape[1]) + 1 + st.num_tokens + st.num_iterations * st.num_tokens + na
    h_s = student_call(model, n, batch, question).last_hidden_state[:, -na:].contiguous()  # a strided slice would
    # make the head a batched matmul (~370 ms per step at 128k rows): a floor takes the head on contiguous rows
    head = model.get_output_embeddings()
    targets = batch.t_ids.new_full(h_s.shape[:2], 5).flatten()
    return loss + torch.nn.functional.cross_entropy(head(h_s).flatten(0, 1), targets)


def floor_twice_step(module: KAVALitModule, batch) -> torch.Tensor:
    """The floor of a step that runs the question again for the student (the peers' step; ours before
    ``teacher.share_question``)."""
    return floor_step(module, batch, question_twice=True)


def pass_floor_step(module: KAVALitModule, batch) -> torch.Tensor:
    """The pass floor: ``pass_floor_loss`` and its backward."""
    loss = pass_floor_loss(module, batch)
    loss.backward()
    return loss


def pass_floor_loss(module: KAVALitModule, batch) -> torch.Tensor:
    """The pass floor's forward: the floor in the decoder calls the method's data dependencies force: the teacher
    sequence; the student's question (or, when shared, the teacher's question KV), ``<bot>`` and M placeholders; T
    passes of M positions on the question's cache, each fed the previous pass's output states, the last followed by
    the answer's positions. Bare calls: no importance, R-KV, KV or CODI loss, projection or special embeddings; the
    LM head where ours takes it."""
    model, st = module.backbone, module.student
    head, embed, decoder = model.get_output_embeddings(), model.get_input_embeddings(), decoder_of(model)
    loss, question = bare_teacher_ce(model, batch, module.method.share_question)
    bsz, m, na = batch.s_q_ids.shape[0], st.num_tokens, 1 + batch.s_a_ids.shape[1]
    if question is not None:
        out = student_call(model, 1 + m, batch, question)
        mask = torch.cat([question.mask, question.mask.new_ones(bsz, 1 + m)], 1)
    else:
        ids = torch.cat([batch.s_q_ids, batch.s_q_ids.new_full((bsz, 1 + m), 5)], 1)
        mask = torch.cat([batch.s_q_mask, batch.s_q_mask.new_ones(bsz, 1 + m)], 1)
        out = decoder(input_ids=ids, attention_mask=mask, position_ids=pad_positions(mask), use_cache=True)
    n_prefix = mask.shape[1] - m
    prefix, prefix_mask = slice_kv(layer_kv(cache_of(out)), 0, n_prefix), mask[:, :n_prefix]
    z = out.last_hidden_state[:, -m:]
    for i in range(st.num_iterations):
        x = z if i < st.num_iterations - 1 else torch.cat([z, embed(batch.s_a_ids[:, :1]), embed(batch.s_a_ids)], 1)
        out = student_call(model, x.shape[1], batch, Prefix(prefix, prefix_mask), inputs_embeds=x)
        z = out.last_hidden_state[:, :m]
    h_s = out.last_hidden_state[:, -na:].contiguous()
    return loss + torch.nn.functional.cross_entropy(head(h_s).flatten(0, 1), batch.s_targets.flatten())


def with_adamw(step: Callable, optimizer: torch.optim.Optimizer) -> Callable:
    """The same step followed by AdamW's update of the trainable parameters, as in training."""

    params = [p for group in optimizer.param_groups for p in group["params"]]

    def run(module: KAVALitModule, batch) -> torch.Tensor:
        loss = step(module, batch)
        for p in params:  # the floor's graph leaves prj and the special embeddings out: update them all the same
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        optimizer.step()
        return loss

    return run


def step_times(module, batch, repeat: int, unshared: KAVALitModule) -> dict[str, list[float]]:
    """Seconds per round of each formulation, interleaved (one call of each per round, first round is warm-up);
    ``unshared`` is the same model with ``teacher.share_question=false``."""
    module.train()
    unshared.train()
    # the updates change the weights the later rounds see; the timing of these shapes does not depend on their values
    adamw = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-6)
    fns = {"ours": our_step, "naive": naive_step, "floor": floor_step, "pass floor": pass_floor_step,
           "floor, question twice": floor_twice_step,
           "ours + AdamW": with_adamw(our_step, adamw), "floor + AdamW": with_adamw(floor_step, adamw)}  # fmt: skip
    rounds = {k: (fn, module) for k, fn in fns.items()}
    rounds["ours, question twice"] = (our_step, unshared)
    return interleaved_rounds(rounds, batch, repeat)


SCOPES = ("decoder", "step")  # model.compile's scopes, as section 1b times them


def compiled_whole(loss_fn: Callable, backend: str = "inductor") -> Callable:
    """A floor's step with its forward (``loss_fn``) compiled into one graph, as ``model.compile=step`` compiles ours,
    and its backward."""
    compiled = torch.compile(loss_fn, dynamic=True, backend=backend)

    def run(module: KAVALitModule, batch) -> torch.Tensor:
        loss = compiled(module, batch)
        loss.backward()
        return loss

    return run


def compiled_rounds(tok, batch, vocab: int | None, rounds: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per round of ours and the floor, eager and under each ``model.compile`` scope (the same batch;
    optimizer excluded), interleaved after one untimed round; ``vocab`` widens the embedding and LM head. With
    ``step`` the floor's forward is compiled whole too. Also the seconds of each compiled step's first (compiling)
    call."""
    mods = {}
    for scope in (False, *SCOPES):
        mod = make_module(tok, 24, 3, compiled=scope).train()
        if vocab:
            mod.backbone.get_base_model().resize_token_embeddings(vocab, mean_resizing=False)
        mods[scope] = mod
    fns = {"ours": (our_step, mods[False]), "floor": (floor_step, mods[False]),
           "ours decoder": (our_step, mods["decoder"]), "floor decoder": (floor_step, mods["decoder"]),
           "ours step": (our_step, mods["step"]), "floor step": (compiled_whole(floor_loss), mods["step"])}  # fmt: skip
    first = {}
    for name, (fn, module) in fns.items():
        if name not in ("ours", "floor"):
            start = time.perf_counter()
            fn(module, batch)
            first[name] = time.perf_counter() - start
            module.zero_grad(set_to_none=True)
    return interleaved_rounds(fns, batch, rounds), first


def interleaved_rounds(fns: dict[str, tuple[Callable, KAVALitModule]], batch, rounds: int, warmup: int = 1):
    """Seconds of each ``(step, module)`` per round, one call of each per round (gradients cleared before it), after
    ``warmup`` untimed rounds: {name: [seconds per round]}."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + rounds):
        for name, (fn, module) in fns.items():
            module.zero_grad(set_to_none=True)
            start = time.perf_counter()
            fn(module, batch)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> tuple[float, float, float]:
    """Median and quartiles of ``num / den`` taken within each round: the machine's drift between rounds cancels."""
    ratios = sorted(a / b for a, b in zip(times[num], times[den], strict=True))
    if len(ratios) < 4:
        return statistics.median(ratios), ratios[0], ratios[-1]
    q1, q2, q3 = statistics.quantiles(ratios, n=4)
    return q2, q1, q3


def fmt_ratio(r: tuple[float, float, float]) -> str:
    return f"{r[0]:.2f} (quartiles {r[1]:.2f}-{r[2]:.2f})"


# --- R-KV reference and memory -------------------------------------------------------------------------
def rkv_loop(keys, importance, start, length, m: int, lam: float) -> list:
    """Per sample, layer and head: plain Python selection (the reference the vectorised code is tested on)."""
    kept = []
    for b in range(keys.shape[1]):
        s, n = int(start[b]), int(length[b])
        for layer in range(keys.shape[0]):
            for h in range(keys.shape[2]):
                k = keys[layer, b, h, s : s + n]
                red = redundancy(k[None, None, None], torch.ones(1, n, dtype=torch.bool))[0, 0, 0]
                score = lam * importance[layer, b, h, s : s + n] + (1 - lam) * red
                kept.append(sorted(score.topk(min(m, n)).indices.tolist()))
    return kept


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_delta_mb(fn: Callable[[], object]) -> float:
    """Peak resident memory added by ``fn``: RSS sampled every 0.5 ms by a thread, after returning freed heap
    memory to the OS (so earlier runs do not hide this one's allocations)."""
    import ctypes
    import threading

    libc = ctypes.CDLL("libc.so.6")
    gc_collect()
    libc.malloc_trim(0)
    base = _rss_bytes()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        stop.set()
        thread.join()
    peak[0] = max(peak[0], _rss_bytes())
    return (peak[0] - base) / 2**20


def gc_collect() -> None:
    import gc

    gc.collect()


def teacher_memory(module, batch, mode: str) -> float:
    """Peak memory of the teacher's transformer pass (no LM head), with the attention set by ``mode``."""
    model = module.backbone
    kwargs = {"input_ids": batch.t_ids, "attention_mask": batch.t_mask, "position_ids": batch.t_pos,
              "use_cache": True, "output_hidden_states": True}  # fmt: skip

    def run() -> None:
        with torch.no_grad():
            if mode == "capture":
                with capture_importance(batch.t_ans_rows, batch.t_ans_mask) as cap:
                    decoder_of(model)(**kwargs)
                cap.stacked()
            elif mode == "sdpa":
                decoder_of(model)(**kwargs)
            else:
                decoder_of(model)(**kwargs, output_attentions=True)

    model.set_attn_implementation({"capture": "kava_sdpa", "sdpa": "sdpa", "eager": "eager"}[mode])
    try:
        return peak_rss_delta_mb(run)
    finally:
        model.set_attn_implementation("kava_sdpa")


def steady_allocator() -> bool:
    """Serve allocations below 1 GiB from glibc's heap and keep freed memory there (``mallopt``), so that a step's time
    does not depend on what the steps before it allocated: under the default dynamic thresholds a step's large blocks
    are mapped and faulted in afresh or not according to the history, and the same floor step ran 10-20% faster right
    after the naive step than after ours. True when both settings took (False where glibc is not the allocator)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    took = [libc.mallopt(m_mmap_threshold, 1 << 30), libc.mallopt(m_trim_threshold, 2**31 - 1)]
    return all(took)


def decoding_rows(module: KAVALitModule, tok) -> list[tuple[int, float, float, float, float]]:
    """Latent and CoT decoding at batch 1 and 64: (batch, latent q/s, latent passes, CoT q/s, CoT passes)."""
    module.eval()
    rows = []
    qs = synthetic_batch(64, 48, 0, len(tok))
    for bsz in (1, 64):
        q_ids, q_mask = qs.s_q_ids[:bsz], qs.s_q_mask[:bsz]
        stops = {tok.eos_token_id}
        n_q = 64 if bsz == 64 else 8
        lat, cot = [], []

        def run_latent(q_ids=q_ids, q_mask=q_mask, stops=stops, out=lat):
            out.append(latent_generate(module.student, module.backbone, tok, q_ids, q_mask, "The answer is:", 8, stops))

        def run_cot(q_ids=q_ids, q_mask=q_mask, stops=stops, out=cot):
            out.append(cot_generate(module.backbone, tok, q_ids, q_mask, 72, stops))

        reps = max(1, n_q // bsz)
        t_lat = timeit(run_latent, reps)
        t_cot = timeit(run_cot, reps)
        p_lat = statistics.mean(lat[-1].forward_passes)
        p_cot = statistics.mean(cot[-1].forward_passes)
        rows.append((bsz, bsz / t_lat, p_lat, bsz / t_cot, p_cot))
    return rows


def teacher_memory_rows(module: KAVALitModule, batch) -> dict[str, float]:
    """Peak memory of the teacher pass under plain SDPA, SDPA with importance capture, and eager attention."""
    mem = {mode: teacher_memory(module, batch, mode) for mode in ("sdpa", "capture", "eager")}
    module.backbone.set_attn_implementation("kava_sdpa")
    return mem


# --- main ----------------------------------------------------------------------------------------------
# the sections of docs/benchmarks.md that other scripts write: compiled_threads.py, step_cost.py, step_parts.py,
# decode_speed.py, methods.py, gpu_check.sh
KEPT_HEADINGS = (
    "## Compiled step at 1 thread",
    "## Step cost at",
    "## Where the step",
    "## Decoding a trained",
    "## Methods",
    "## GPU",
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats and sizes (smoke test)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    rep = 2 if args.quick else 5
    step_rep = 2 if args.quick else 15  # the step ratios: paired rounds, enough for quartiles
    t0 = time.perf_counter()
    tok = bench_tokenizer()
    module = make_module(tok, 24, 3)
    # decoding and the memory table first, with the allocator a user's process has; then the steady heap
    dec_rows = decoding_rows(module, tok)
    cot_lengths = (64, 128, 256, 512, 1024) if not args.quick else (64, 256)
    mem_rows = [(c, teacher_memory_rows(module, synthetic_batch(16, 48, c, len(tok)))) for c in cot_lengths]
    steady = steady_allocator()
    lines = [
        "# Benchmarks",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads. Tiny GQA Llama: 4 layers, hidden 128, 4/2 heads, "
        "LoRA r=16 on all linear layers, fp32. Times are medians of interleaved repeats in one process"
        + (
            "; the decoding (section 4) and the memory table (section 3) ran first, with the default allocator, "
            "the rest after glibc's heap was set to serve allocations below 1 GiB and keep freed memory "
            "(`steady_allocator`), so that a step's time does not depend on what ran before it (a separate "
            "comparison, not part of this script, measured batch-1 latent decoding about 10% slower under it); "
            "the compiled steps (section 1b) ran last."
            if steady
            else "; the platform's default allocator."
        ),
        "",
        "Regenerate: `OMP_NUM_THREADS=2 python bench/run.py`.",
        "",
    ]

    # 1. step time at M=24, T=3
    batch = synthetic_batch(16, 48, 64, len(tok))
    threads = torch.get_num_threads()
    unshared = make_module(tok, 24, 3, overrides=["teacher.share_question=false"])  # the same initial weights
    st_rounds = step_times(module, batch, step_rep, unshared)
    st = {k: statistics.median(v) for k, v in st_rounds.items()}
    st1_rounds: dict[str, list[float]] = {}
    if threads > 1:  # the same step at 1 thread, so that both thread counts are reported by one run
        torch.set_num_threads(1)
        st1_rounds = step_times(module, batch, step_rep, unshared)
        torch.set_num_threads(threads)
    lines += [
        "## 1. Training step (batch 16, question ~48, CoT 64 tokens, M=24, T=3)",
        "",
        "| formulation | ms / step | ratio to ours |",
        "|---|---|---|",
        *[f"| {k} | {1000 * v:.0f} | {v / st['ours']:.2f} |" for k, v in st.items()],
        "",
        f"Ratios, each the median over {step_rep} rounds of the two times measured in the same round: "
        f"ours/naive = {fmt_ratio(paired_ratio(st_rounds, 'ours', 'naive'))}; ours/floor = "
        f"{fmt_ratio(paired_ratio(st_rounds, 'ours', 'floor'))} without the optimizer step, "
        f"{fmt_ratio(paired_ratio(st_rounds, 'ours + AdamW', 'floor + AdamW'))} with it, at {threads} thread(s)"
        + (
            f"; at 1 thread (same process, measured after): "
            f"{fmt_ratio(paired_ratio(st1_rounds, 'ours', 'floor'))} without, "
            f"{fmt_ratio(paired_ratio(st1_rounds, 'ours + AdamW', 'floor + AdamW'))} with "
            f"({1000 * statistics.median(st1_rounds['ours']):.0f} vs "
            f"{1000 * statistics.median(st1_rounds['floor']):.0f} ms)."
            if st1_rounds
            else "."
        )
        + f" Against the floor of a step that runs the question twice (the peers' step; ours with "
        f"`teacher.share_question=false`), at {threads} thread(s) without the optimizer step: "
        f"{fmt_ratio(paired_ratio(st_rounds, 'ours', 'floor, question twice'))}"
        + (
            f"; at 1 thread {fmt_ratio(paired_ratio(st1_rounds, 'ours', 'floor, question twice'))}."
            if st1_rounds
            else "."
        )
        + f" What sharing the question saves: ours / ours with `teacher.share_question=false` (the same initial "
        f"weights) = {fmt_ratio(paired_ratio(st_rounds, 'ours', 'ours, question twice'))} at {threads} thread(s)"
        + (
            f", {fmt_ratio(paired_ratio(st1_rounds, 'ours', 'ours, question twice'))} at 1 thread."
            if st1_rounds
            else "."
        )
        + f" Against the pass floor, at {threads} thread(s) without the optimizer step: ours/pass floor = "
        f"{fmt_ratio(paired_ratio(st_rounds, 'ours', 'pass floor'))}, pass floor/floor = "
        f"{fmt_ratio(paired_ratio(st_rounds, 'pass floor', 'floor'))}"
        + (
            f"; at 1 thread {fmt_ratio(paired_ratio(st1_rounds, 'ours', 'pass floor'))} and "
            f"{fmt_ratio(paired_ratio(st1_rounds, 'pass floor', 'floor'))}."
            if st1_rounds
            else "."
        ),
        "",
        "What the ratios measure: the floor is a bare forward and backward of the positions our step computes (the "
        "teacher sequence, and one student sequence as long as `<bot>`, the latents of every pass and the answer, "
        "which reads the teacher call's question KV as ours does with `teacher.share_question`) in two "
        "plain decoder calls, with the LM head and CE where ours has them (the teacher's target positions, the "
        "student's answer part); it does no R-KV, no KV or CODI loss, no Jacobi bookkeeping, "
        "but its student sequence attends over all of its positions at once, where our passes attend over the "
        "question's cache and M latents. The floor with the question twice runs the question again at the start of "
        "its student sequence: the floor of a step that does not share the question, the floor of earlier versions "
        "of this page. The pass floor is the same bare computation in the decoder calls the "
        "method's data dependencies force (the teacher; `<bot>` and M placeholders on its question; T passes of M "
        "positions on the question's cache, each fed the previous pass's output, the answer's positions after the "
        "last): ours/pass floor is what our own work costs (importance capture, R-KV, the KV and CODI losses, the "
        "projection and special embeddings, each pass's latent KV kept), pass floor/floor what splitting the student "
        "into T + 1 dependent calls costs at this size. The naive step re-runs the question in every Jacobi pass, "
        "takes the importance from eager attention probabilities, runs the answer in a decoder call of its own, and "
        "takes the "
        "LM head at every teacher and answer position "
        "through a (B, V, S) view of the logits, the straightforward way. AdamW's update is the same on both "
        "sides (the same trainable parameters step) and costs little at this size. Our step can gain less "
        "from a second thread than the floor, as expected of its many smaller operations. On a shared or virtual "
        "machine the same step's time drifts (section 2 times the M=24, T=3, CoT 64 step three times in one run: "
        "compare its three rows), so a ratio of two medians taken over different rounds moved by up to 0.25 between "
        "runs of this script (1.13 and 1.39 in two runs of an earlier version); the ratios are therefore taken within"
        " each round and their median and quartiles over the rounds reported. Compare ratios at the same thread "
        "count, with or without the optimizer step, and say which.",
        "",
    ]
    print("\n".join(lines[-8:]), flush=True)

    at_1b = len(lines)  # section 1b runs last (compiled code can slow the eager steps that follow it) and goes here

    # 2. growth
    rows = []
    for m in (6, 12, 24, 48):
        mod = make_module(tok, m, 3)
        rows.append((f"M={m}, T=3, CoT 64", timeit(lambda mod=mod: our_step(mod, batch), rep)))
    for t in (1, 3, 6):
        mod = make_module(tok, 24, t)
        rows.append((f"M=24, T={t}, CoT 64", timeit(lambda mod=mod: our_step(mod, batch), rep)))
    for c in (32, 64, 128, 256, 512) if not args.quick else (32, 128):
        b = synthetic_batch(16, 48, c, len(tok))
        rows.append((f"M=24, T=3, CoT {c}", timeit(lambda b=b: our_step(module, b), rep)))
    lines += ["## 2. Growth of our step time (batch 16)", "", "| setting | ms / step |", "|---|---|"]
    lines += [f"| {k} | {1000 * v:.0f} |" for k, v in rows] + [""]
    print("\n".join(lines[-(len(rows) + 2) :]), flush=True)

    # 3. R-KV speed and teacher memory
    rkv_rows = []
    for c in cot_lengths:
        b = synthetic_batch(16, 48, c, len(tok))
        with torch.no_grad():
            t = teacher_forward(module.backbone, b, "shared")
        vec = timeit(lambda t=t, b=b: compress(t.keys, t.values, t.importance, b.cot_start, b.cot_len, 24, 0.1), rep)
        loop = timeit(lambda t=t, b=b: rkv_loop(t.keys, t.importance, b.cot_start, b.cot_len, 24, 0.1), 1, 0)
        rkv_rows.append((c, vec, loop))
    lines += [
        "## 3. R-KV compression and teacher-pass memory (batch 16, 4 layers x 2 KV heads)",
        "",
        "| CoT length | R-KV vectorised (ms) | per-sample/head loop (ms) | speed-up |",
        "|---|---|---|---|",
        *[f"| {c} | {1000 * v:.1f} | {1000 * lp:.0f} | {lp / v:.0f}x |" for c, v, lp in rkv_rows],
        "",
        "Peak resident memory added by one no-grad teacher forward (MB; RSS sampled every 0.5 ms):",
        "",
        "| CoT length | plain SDPA | SDPA + importance capture (ours) | eager output_attentions | ours / SDPA |",
        "|---|---|---|---|---|",
        *[
            f"| {c} | {m['sdpa']:.0f} | {m['capture']:.0f} | {m['eager']:.0f} | "
            f"{m['capture'] / max(m['sdpa'], 1e-9):.2f} |"
            for c, m in mem_rows
        ],
        "",
    ]
    print("\n".join(lines[-(len(rkv_rows) + len(mem_rows) + 8) :]), flush=True)

    # 4. decoding (measured first, above)
    lines += [
        "## 4. Decoding (random-init model: 8 answer tokens for latent, 72 CoT+answer tokens for CoT)",
        "",
        "| batch | latent q/s | latent passes | CoT q/s | CoT passes | latent/CoT speed |",
        "|---|---|---|---|---|---|",
        *[f"| {b} | {lq:.1f} | {lp:.0f} | {cq:.1f} | {cp:.0f} | {lq / cq:.1f}x |" for b, lq, lp, cq, cp in dec_rows],
        "",
    ]

    # 1b. compiled (model.compile): at the bench vocabulary and at Llama 3's; measured last, placed after section 1
    comp_rows = []
    for vocab in (None, LLAMA3_VOCAB):
        r, first = compiled_rounds(tok, batch, vocab, 3 if args.quick else 11)
        v = vocab or len(tok)
        comp_rows.append((v, "no", statistics.median(r["ours"]), statistics.median(r["floor"]),
                          paired_ratio(r, "ours", "floor"), None, None, None))  # fmt: skip
        for scope in SCOPES:
            o, f = f"ours {scope}", f"floor {scope}"
            ratios = paired_ratio(r, o, f), paired_ratio(r, o, "ours"), paired_ratio(r, f, "floor")
            comp_rows.append((v, f"`{scope}`", statistics.median(r[o]), statistics.median(r[f]), *ratios,
                              (first[o], first[f])))  # fmt: skip
    dash = "–"
    section = [
        f"## 1b. Compiled step (`model.compile`; the same batch, optimizer excluded, {threads} thread(s))",
        "",
        "| LM head rows | compiled | ours ms | floor ms | ours/floor | compiled/eager, ours | compiled/eager, floor | "
        "first (compiling) step s, ours / floor |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {v} | {sc} | {1000 * a:.0f} | {1000 * b:.0f} | {fmt_ratio(r1)} | {fmt_ratio(r2) if r2 else dash} | "
          f"{fmt_ratio(r3) if r3 else dash} | {f'{c[0]:.0f} / {c[1]:.0f}' if c else dash} |"
          for v, sc, a, b, r1, r2, r3, c in comp_rows],
        "",
        "Ratios within each round, median and quartiles over the rounds, as in section 1; one untimed round first, "
        "after each compiled step's first call. `decoder` compiles the decoder stack, the floor's with it; `step` "
        "compiles our whole loss computation into one graph (teacher pass, R-KV, the student's passes, the losses; "
        "its backward with it), and the floor's forward likewise (docs/design.md §3). 128,256 rows widen the "
        "embedding and LM head of the same model (Llama 3's vocabulary).",
        "",
    ]  # fmt: skip
    lines[at_1b:at_1b] = section
    print("\n".join(section), flush=True)
    lines.append(f"Total benchmark time: {(time.perf_counter() - t0) / 60:.1f} min.")
    text = "\n".join(lines) + "\n"
    old = Path(args.out).read_text() if Path(args.out).exists() else ""
    kept = [old.index(h) for h in KEPT_HEADINGS if h in old]
    if kept:  # the methods and GPU figures come from other scripts (the GPU ones from a GPU machine): keep them
        text += "\n" + old[min(kept) :]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
