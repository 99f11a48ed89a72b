"""``KAVALitModule``: teacher pass + R-KV + latent student + losses, optimisation and lean checkpoints."""

from __future__ import annotations

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
from kava.distill.losses import codi_loss, kv_step_loss, step_weights, token_ce
from kava.distill.rkv import compress
from kava.inference import cot_generate, latent_generate
from kava.metrics import AnswerAccuracy, extract_answer
from kava.model.backbone import apply_lora, load_base_model, load_tokenizer
from kava.model.student import LatentStudent, decoder_of
from kava.model.teacher import TEACHER_MODES, teacher_forward

CKPT_KEY = "kava"
OBJECTIVES = ("kava", "cot")


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
        )
        self.teacher_mode = teacher["mode"]
        self.objective = loss.get("objective", "kava")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"loss.objective must be one of {OBJECTIVES}, got '{self.objective}'")
        self.loss_cfg = loss
        self.optim_cfg = optim
        self.kv_weights = step_weights(loss["kv_steps"], self.student.num_iterations)
        self.answer_prompt = data.get("answer_prompt", DEFAULT_PROMPT)
        self.val_acc_cfg = {"num_batches": 1, "every_n_validations": 1, "max_new_tokens": 12, **val_acc}
        self.val_accuracy = AnswerAccuracy()
        self._validations = 0
        self._last_val_acc: float | None = None
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
        cfg = self.loss_cfg
        if self.objective == "cot":
            return self._cot_losses(batch)
        t = teacher_forward(self.backbone, batch, self.teacher_mode)
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
        terms: dict[str, torch.Tensor] = {}
        per: dict[str, torch.Tensor] = {}
        terms["student_ce"], per["student_ce"] = token_ce(s.answer_logits, batch["s_targets"])
        terms["teacher_ce"], per["teacher_ce"] = token_ce(t.logits, batch["t_targets"])
        bidx = torch.arange(batch["s_distill"].shape[0], device=self.device)
        s_hidden = torch.stack(s.answer_hidden[1:])[:, bidx, batch["s_distill"]]
        terms["codi"], per["codi"] = codi_loss(s_hidden, t.distill_hidden, bool(cfg.get("codi_std_norm", True)))
        weights = self.kv_weights.to(self.device)
        kv_total = torch.zeros((), device=self.device)
        kv_per = torch.zeros_like(per["codi"])
        for i, (k_t, v_t) in enumerate(s.latent_kv):
            name = f"kv_step_{i + 1}"
            terms[name], per[name] = kv_step_loss(
                k_t, v_t, target.keys, target.values, target.mask, cfg["kv_loss"], bool(cfg["layerwise_std"])
            )
            kv_total = kv_total + weights[i] * terms[name]
            kv_per = kv_per + weights[i] * per[name]
        terms["kv_total"], per["kv_total"] = kv_total, kv_per
        w_teacher = 0.0 if self.teacher_mode == "frozen" else float(cfg["teacher_ce_weight"])
        a1, a2 = float(cfg["alpha1"]), float(cfg["alpha2"])
        terms["loss"] = terms["student_ce"] + w_teacher * terms["teacher_ce"] + a1 * terms["codi"] + a2 * kv_total
        per["loss"] = per["student_ce"] + w_teacher * per["teacher_ce"] + a1 * per["codi"] + a2 * kv_per
        return terms, per

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
        terms = self.compute_losses(batch)
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

    def on_validation_epoch_end(self) -> None:
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
