"""``KAVALitModule``: teacher pass + R-KV + latent student + losses, optimisation and lean checkpoints."""

from __future__ import annotations

import dataclasses
import io
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

from kava.data.sequences import DEFAULT_PROMPT
from kava.diagnostics import kv_cosine_sums
from kava.distill.losses import (
    STUDENT_CE_SPANS,
    answer_only_targets,
    codi_loss,
    kv_step_loss,
    step_weights,
    token_ce,
)
from kava.distill.rkv import CompressedKV, compress
from kava.inference import cot_generate, latent_generate
from kava.metrics import AnswerAccuracy, extract_answer
from kava.model.backbone import apply_lora, load_base_model, load_tokenizer
from kava.model.rope import unrotate_keys
from kava.model.student import LatentStudent, StudentOutput, decoder_of
from kava.model.teacher import TEACHER_MODES, TeacherOutput, teacher_forward

CKPT_KEY = "kava"
OBJECTIVES = ("kava", "cot")
KEY_SPACES = ("post_rope", "pre_rope")
TEACHER_TARGETS = ("adapted", "base")
CODI_POSITIONS = ("prompt_end", "before_answer")


LATENT_SCALES = ("layernorm", "embedding")


def latent_output_scale(kind: str, embeddings: torch.Tensor) -> float | None:
    """``latent.output_scale``: ``layernorm`` keeps prj's LayerNorm gain at 1 (latents of RMS 1, as PCCoT/CODI);
    ``embedding`` starts it at the token embeddings' RMS, so latents enter the backbone at the scale of a token."""
    if kind not in LATENT_SCALES:
        raise ValueError(f"latent.output_scale must be one of {LATENT_SCALES}, got '{kind}'")
    return float(embeddings.detach().float().pow(2).mean().sqrt()) if kind == "embedding" else None


def _choice(cfg: Mapping[str, Any], key: str, allowed: tuple[str, ...], group: str) -> str:
    """``cfg[key]`` (default: the first allowed value), checked against the allowed values."""
    value = cfg.get(key, allowed[0])
    if value not in allowed:
        raise ValueError(f"{group}.{key} must be one of {allowed}, got '{value}'")
    return value


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


class KAVALitModule(L.LightningModule):
    """Trains the LoRA backbone (teacher CE, shared mode), the student's special embeddings and ``prj``.

    ``training_step`` logs ``train/student_ce``, ``train/teacher_ce``, ``train/codi``,
    ``train/kv_step_1..T``, ``train/kv_total`` and ``train/loss``; ``validation_step`` the same under
    ``val/``. Checkpoints keep only parameters that train (and, for the tiny model, its tokenizer).
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        latent: Mapping[str, Any],
        teacher: Mapping[str, Any],
        loss: Mapping[str, Any],
        optim: Mapping[str, Any],
        data: Mapping[str, Any] | None = None,
        val_acc: Mapping[str, Any] | None = None,
        tokenizer=None,
    ) -> None:
        super().__init__()
        model, latent, teacher, loss, optim = (_plain(c) for c in (model, latent, teacher, loss, optim))
        data, val_acc = _plain(data) or {}, _plain(val_acc) or {}
        self.save_hyperparameters(ignore=["tokenizer"])
        if teacher["mode"] not in TEACHER_MODES:
            raise ValueError(f"teacher.mode must be one of {TEACHER_MODES}, got '{teacher['mode']}'")
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model)
        base = load_base_model(model, self.tokenizer)
        self.backbone = apply_lora(base, model.get("lora"))
        emb = base.get_input_embeddings().weight
        self.student = LatentStudent(
            hidden_size=base.config.hidden_size,
            num_tokens=int(latent["num_tokens"]),
            num_iterations=int(latent["num_iterations"]),
            use_projection=bool(latent.get("use_projection", True)),
            proj_dim=latent.get("proj_dim"),
            init_embedding=emb.detach().float().mean(0),
            output_scale=latent_output_scale(latent.get("output_scale", "layernorm"), emb),
        )
        self.teacher_mode = teacher["mode"]
        self.teacher_targets = _choice(teacher, "targets", TEACHER_TARGETS, "teacher")
        self.objective = _choice(loss, "objective", OBJECTIVES, "loss")
        self.loss_cfg = loss
        self.student_ce_on = _choice(loss, "student_ce_on", STUDENT_CE_SPANS, "loss")
        self.codi_position = _choice(loss, "codi_position", CODI_POSITIONS, "loss")
        self.key_space = _choice(loss, "key_space", KEY_SPACES, "loss")
        self._space_ids: torch.Tensor | None = None
        self.optim_cfg = optim
        self.kv_weights = step_weights(loss["kv_steps"], self.student.num_iterations)
        self.answer_prompt = data.get("answer_prompt", DEFAULT_PROMPT)
        self.val_acc_cfg = {"num_batches": 1, "every_n_validations": 1, "max_new_tokens": 12, **val_acc}
        self.val_accuracy = AnswerAccuracy()
        self._validations = 0
        self._last_val_acc: float | None = None
        self._kv_cos: list[torch.Tensor] | None = None
        self.kv_cosine: torch.Tensor | None = None  # (T, 2, L, M) from the last validation; see kava.diagnostics
        self.strict_loading = False  # checkpoints omit frozen base weights; see on_load_checkpoint

    # forward and losses --------------------------------------------------------------------------
    def compute_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every loss term of the batch (scalars), keyed by its logged name without the stage prefix."""
        terms, _ = self.losses_with_per_sample(batch)
        return terms

    def losses_with_per_sample(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Batch values and per-sample values (B,) of every term."""
        if self.objective == "cot":
            return self._cot_losses(batch)
        return self._kava_losses(batch, *self.distill_forward(batch))

    def distill_forward(self, batch: dict[str, torch.Tensor]) -> tuple[TeacherOutput, CompressedKV, StudentOutput]:
        """The teacher pass, its R-KV-compressed CoT cache and the student passes of one batch."""
        cfg = self.loss_cfg
        base_targets = self.teacher_targets == "base" and self.teacher_mode == "shared"
        t = teacher_forward(self.backbone, batch, self.teacher_mode, capture=not base_targets)
        if base_targets:  # the CE pass above, the targets from the adapter-free base: targets that stay put
            t = dataclasses.replace(teacher_forward(self.backbone, batch, "frozen"), logits=t.logits)
        target = compress(
            t.keys,
            t.values,
            t.importance,
            batch["cot_start"],
            batch["cot_len"],
            self.student.num_tokens,
            lam=float(cfg["rkv_lambda"]),
            layer_chunk=cfg.get("rkv_layer_chunk"),
        )
        s = self.student(self.backbone, batch["s_q_ids"], batch["s_q_mask"], batch["s_a_ids"], batch["s_a_mask"])
        return t, target, s

    def _kava_losses(
        self, batch: dict[str, torch.Tensor], t: TeacherOutput, target: CompressedKV, s: StudentOutput
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        cfg = self.loss_cfg
        terms: dict[str, torch.Tensor] = {}
        per: dict[str, torch.Tensor] = {}
        s_targets = batch["s_targets"]
        if self.student_ce_on == "answer":
            s_targets = answer_only_targets(s_targets, batch["s_distill"])
        terms["student_ce"], per["student_ce"] = token_ce(s.answer_logits, s_targets)
        terms["teacher_ce"], per["teacher_ce"] = token_ce(t.logits, batch["t_targets"])
        bidx = torch.arange(batch["s_distill"].shape[0], device=self.device)
        s_idx, t_hidden = batch["s_distill"], t.distill_hidden
        if self.codi_position == "before_answer":  # skip A's leading whitespace token: predict the first digit
            lead = self.leading_space(batch)
            s_idx = s_idx + lead
            t_hidden = torch.where(lead.bool()[None, :, None].to(t_hidden.device), t.next_hidden, t_hidden)
        s_hidden = torch.stack(s.answer_hidden[1:])[:, bidx, s_idx]
        terms["codi"], per["codi"] = codi_loss(s_hidden, t_hidden, bool(cfg.get("codi_std_norm", True)))
        weights = self.kv_weights.to(self.device)
        kv_total = torch.zeros((), device=self.device)
        kv_per = torch.zeros_like(per["codi"])
        latent_kv, t_keys = self.kv_in_key_space(batch, target, s)
        for i, (k_t, v_t) in enumerate(latent_kv):
            name = f"kv_step_{i + 1}"
            terms[name], per[name] = kv_step_loss(
                k_t, v_t, t_keys, target.values, target.mask, cfg["kv_loss"], bool(cfg["layerwise_std"])
            )
            kv_total = kv_total + weights[i] * terms[name]
            kv_per = kv_per + weights[i] * per[name]
        terms["kv_total"], per["kv_total"] = kv_total, kv_per
        w_teacher = 0.0 if self.teacher_mode == "frozen" else float(cfg["teacher_ce_weight"])
        a1, a2 = float(cfg["alpha1"]), float(cfg["alpha2"])
        terms["loss"] = terms["student_ce"] + w_teacher * terms["teacher_ce"] + a1 * terms["codi"] + a2 * kv_total
        per["loss"] = per["student_ce"] + w_teacher * per["teacher_ce"] + a1 * per["codi"] + a2 * kv_per
        return terms, per

    def leading_space(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """1 where the answer's first token is whitespace only (e.g. " " before single-digit tokens), else 0 (B,)."""
        if self._space_ids is None:
            vocab = range(len(self.tokenizer))
            ids = [i for i in vocab if self.tokenizer.decode([i]).strip() == ""]
            self._space_ids = torch.tensor(ids or [-1], dtype=torch.long)
        first = batch["s_a_ids"].gather(1, batch["s_distill"][:, None]).squeeze(1)  # A[0]: P sits at 0..npr-1
        return torch.isin(first, self._space_ids.to(first.device)).long()

    def kv_in_key_space(
        self, batch: dict[str, torch.Tensor], target: CompressedKV, s: StudentOutput
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """The student's (K_t, V_t) per Jacobi step and the target keys in ``loss.key_space``.

        ``post_rope`` compares the keys as cached; ``pre_rope`` rotates both sides back to position 0, so that a
        latent at position ``nq + 1 + m`` is not asked to reproduce the rotation of a CoT token at ``nq + j``.
        """
        if self.key_space == "post_rope":
            return s.latent_kv, target.keys
        m = self.student.num_tokens
        s_pos = batch["s_q_mask"].sum(-1)[:, None] + 1 + torch.arange(m, device=self.device)[None]  # (B, M)
        t_pos = batch["cot_start"].to(self.device)[None, :, None, None] + target.index  # (L, B, H, M)
        t_keys = unrotate_keys(self.backbone, target.keys, t_pos) * target.mask[None, :, None, :, None]
        latent_kv = [(unrotate_keys(self.backbone, k, s_pos[None, :, None, :]), v) for k, v in s.latent_kv]
        return latent_kv, t_keys

    def loss_weights(self) -> dict[str, float]:
        """The weight of each logged term in ``loss`` (per-step KV terms carry ``alpha2 * w_t``)."""
        if self.objective == "cot":
            return {"teacher_ce": 1.0}
        cfg = self.loss_cfg
        weights = {
            "student_ce": 1.0,
            "teacher_ce": 0.0 if self.teacher_mode == "frozen" else float(cfg["teacher_ce_weight"]),
            "codi": float(cfg["alpha1"]),
        }
        for i, w in enumerate(self.kv_weights.tolist()):
            weights[f"kv_step_{i + 1}"] = float(cfg["alpha2"]) * w
        return weights

    def _cot_losses(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``loss.objective=cot``: the teacher sequence's CE alone (no student, no distillation)."""
        out = decoder_of(self.backbone)(
            input_ids=batch["t_ids"], attention_mask=batch["t_mask"], position_ids=batch["t_pos"]
        )
        ce, per = token_ce(self.backbone.get_output_embeddings()(out.last_hidden_state), batch["t_targets"])
        return {"teacher_ce": ce, "loss": ce}, {"teacher_ce": per, "loss": per}

    def _log_terms(self, stage: str, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        on_step = stage == "train"
        for k, v in terms.items():
            self.log(
                f"{stage}/{k}",
                v.detach(),
                on_step=on_step,
                on_epoch=not on_step,
                batch_size=batch_size,
                prog_bar=k == "loss",
                sync_dist=not on_step,  # epoch-level validation values are averaged over processes
            )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        terms = self.compute_losses(batch)
        self._log_terms("train", terms, batch["t_ids"].shape[0])
        return terms["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if self.objective == "cot":
            terms = self.compute_losses(batch)
        else:
            t, target, s = self.distill_forward(batch)
            terms, _ = self._kava_losses(batch, t, target, s)
            latent_kv, t_keys = self.kv_in_key_space(batch, target, s)
            if latent_kv:  # none for pause tokens (T = 0)
                sums, counts = kv_cosine_sums(latent_kv, t_keys, target.values, target.mask)
                self._kv_cos = (
                    [sums, counts] if self._kv_cos is None else [self._kv_cos[0] + sums, self._kv_cos[1] + counts]
                )
        self._log_terms("val", terms, batch["t_ids"].shape[0])
        if self._val_acc_due() and batch_idx < int(self.val_acc_cfg["num_batches"]) and self.objective == "cot":
            gen = cot_generate(
                self.backbone,
                self.tokenizer,
                batch["s_q_ids"],
                batch["s_q_mask"],
                int(self.val_acc_cfg.get("max_cot_tokens", 96)),
            )
            preds = [extract_answer(t, self.answer_prompt) for t in gen.texts]
            self.val_accuracy.update(preds, batch["gold"].tolist())
        elif self._val_acc_due() and batch_idx < int(self.val_acc_cfg["num_batches"]):
            gen = latent_generate(
                self.student,
                self.backbone,
                self.tokenizer,
                batch["s_q_ids"],
                batch["s_q_mask"],
                self.answer_prompt,
                int(self.val_acc_cfg["max_new_tokens"]),
            )
            preds = [extract_answer(self.answer_prompt + t, self.answer_prompt) for t in gen.texts]
            self.val_accuracy.update(preds, batch["gold"].tolist())

    def _val_acc_due(self) -> bool:
        every = int(self.val_acc_cfg["every_n_validations"])
        return int(self.val_acc_cfg["num_batches"]) > 0 and every > 0 and self._validations % every == 0

    def on_validation_epoch_start(self) -> None:
        self._kv_cos = None

    def on_validation_epoch_end(self) -> None:
        if self._kv_cos is not None:
            sums, counts = self._kv_cos
            if self.trainer is not None and self.trainer.world_size > 1:
                sums, counts = self.all_gather(sums).sum(0), self.all_gather(counts).sum(0)
            # (T, 2, L, M): mean cosine of each latent slot's K (0) / V (1) with its R-KV target, per step and layer
            self.kv_cosine = (sums / counts.clamp(min=1)).detach().cpu()
            valid = (counts > 0).cpu()
            for i in range(self.kv_cosine.shape[0]):
                for j, kind in enumerate(("k", "v")):
                    value = self.kv_cosine[i, j][:, valid].mean() if valid.any() else torch.tensor(0.0)
                    self.log(f"val/kv_cos_{kind}_step_{i + 1}", float(value))
        if self._val_acc_due() and int(self.val_accuracy.total) > 0:
            self._last_val_acc = float(self.val_accuracy.compute())
        self.val_accuracy.reset()
        self._validations += 1
        if self._last_val_acc is not None:
            self.log("val/acc", self._last_val_acc, prog_bar=True)

    # optimisation --------------------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.optim_cfg
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 and not name.startswith("student.special") else no_decay).append(p)
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": float(cfg["weight_decay"])},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=float(cfg["lr"]),
            betas=tuple(cfg.get("betas", (0.9, 0.999))),
        )
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(round(float(cfg.get("warmup_ratio", 0.0)) * total))
        sched = get_cosine_schedule_with_warmup(opt, warmup, max(total, 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # checkpoints ---------------------------------------------------------------------------------
    def trainable_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        extra: dict[str, Any] = {"trainable": sorted(keep)}
        if not self.hparams.model.get("name_or_path") and not self.hparams.model.get("tokenizer_path"):
            with tempfile.TemporaryDirectory() as d:
                self.tokenizer.save_pretrained(d)
                extra["tokenizer_files"] = {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file()}
        extra["rng"] = {"torch": torch.get_rng_state()}  # LoRA dropout draws from it; resume continues it
        if torch.cuda.is_available():
            extra["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint[CKPT_KEY] = extra

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get(CKPT_KEY, {}).get("rng")
        if rng and self._trainer is not None:  # resuming a fit (not a plain reload for evaluation)
            torch.set_rng_state(rng["torch"].cpu())
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        missing = self.trainable_names() - set(checkpoint["state_dict"])
        if missing:
            raise KeyError(f"checkpoint lacks trained parameters {sorted(missing)[:5]}...: it is not from this setup")

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> KAVALitModule:
        """Rebuild the exact module (base from its config or seed, tokenizer, trained parts) from a checkpoint,
        or from a folder written by ``kava.export``."""
        from kava.export import is_export, load_pretrained

        if is_export(path):
            return load_pretrained(path, str(map_location))
        with open(path, "rb") as f:
            ckpt = torch.load(io.BytesIO(f.read()), map_location=map_location, weights_only=False)
        hp = ckpt["hyper_parameters"]
        tokenizer = None
        files = ckpt.get(CKPT_KEY, {}).get("tokenizer_files")
        if files:
            with tempfile.TemporaryDirectory() as d:
                for name, data in files.items():
                    (Path(d) / name).write_bytes(data)
                tokenizer = AutoTokenizer.from_pretrained(d)
        module = cls(tokenizer=tokenizer, **hp)
        module.on_load_checkpoint(ckpt)
        module.load_state_dict(ckpt["state_dict"], strict=False)
        return module
