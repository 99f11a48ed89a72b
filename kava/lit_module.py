"""``KAVALitModule``: the backbone, a method's losses (``kava.methods``), optimisation, logging and lean checkpoints."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from omegaconf import DictConfig, OmegaConf
from transformers import get_cosine_schedule_with_warmup

from kava.compat import incompatible, resume_message, with_method, with_method_prefix
from kava.data.answers import extract_answer
from kava.data.collate import Batch
from kava.errors import NonFiniteError, ResumeError
from kava.inference import stop_token_ids
from kava.methods.base import Method, compile_losses
from kava.metrics import AnswerAccuracy
from kava.model.backbone import apply_lora, compile_decoder, load_base_model, load_tokenizer
from kava.schema import (
    ConfigValueError,
    LatentSchema,
    LossSchema,
    MethodSchema,
    ModelSchema,
    OptimSchema,
    TeacherSchema,
    ValAccSchema,
    compile_scope,
    typed,
)

CKPT_KEY = "kava"
LOOK_AT = "optim.lr, the loss weights (loss.alpha1, loss.alpha2, loss.teacher_ce_weight), trainer.gradient_clip_val"


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def build_method(
    method: Mapping[str, Any],
    loss: Mapping[str, Any],
    teacher: Mapping[str, Any],
    latent: Mapping[str, Any],
    backbone: torch.nn.Module,
    tokenizer: Any,
    answer_prompt: str,
) -> Method:
    """The method of ``method._target_`` over ``backbone``, given the config sections it reads (as typed objects)."""
    target = typed(MethodSchema, method, "method")._target_  # ``name`` labels the run; the class does not take it
    cls = hydra.utils.get_class(target)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"method._target_={target} is not a kava.methods.base.Method subclass")
    return cls(
        loss=typed(LossSchema, loss, "loss"),
        teacher=typed(TeacherSchema, teacher, "teacher"),
        latent=typed(LatentSchema, latent, "latent"),
        backbone=backbone,
        tokenizer=tokenizer,
        answer_prompt=answer_prompt,
    )


class KAVALitModule(L.LightningModule):
    """Trains what the method says (LoRA backbone, and the latent student's special embeddings and ``prj`` when the
    method has latents) on the method's ``loss``.

    ``training_step`` logs each of the method's terms as ``train/<term>`` (for ``method=kava``: ``student_ce``,
    ``teacher_ce``, ``codi``, ``kv_step_1..T``, ``kv_total``, ``loss``); ``validation_step`` the same under ``val/``
    and ``val/acc``. Checkpoints keep only parameters that train (and, for the tiny model, its tokenizer).

    Every section is required: the run's config (``kava.schema``), or a checkpoint's hyperparameters in today's form
    (``kava.compat.with_method``); the sections are stored as given and used as typed objects.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        latent: Mapping[str, Any],
        teacher: Mapping[str, Any],
        loss: Mapping[str, Any],
        optim: Mapping[str, Any],
        data: Mapping[str, Any],
        val_acc: Mapping[str, Any],
        method: Mapping[str, Any],
        tokenizer=None,
    ) -> None:
        super().__init__()
        model, latent, teacher, loss, optim, data, val_acc, method = (
            _plain(c) for c in (model, latent, teacher, loss, optim, data, val_acc, method)
        )
        self.save_hyperparameters(ignore=["tokenizer"])
        self.model_cfg = typed(ModelSchema, model, "model")
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.model_cfg)
        self.answer_prompt: str = data["answer_prompt"]  # the data section is kept whole for evaluation
        backbone = apply_lora(load_base_model(self.model_cfg, self.tokenizer), self.model_cfg.lora)
        scope = compile_scope(self.model_cfg.compile)
        if scope == "decoder":
            compile_decoder(backbone)
        self.method = build_method(method, loss, teacher, latent, backbone, self.tokenizer, self.answer_prompt)
        if scope == "step":
            compile_losses(self.method)
        self.optim_cfg = typed(OptimSchema, optim, "optim")
        self.val_acc_cfg = typed(ValAccSchema, val_acc, "val_acc")
        self.val_accuracy = AnswerAccuracy()
        self.val_teacher_accuracy = AnswerAccuracy()  # latent methods: the backbone writing the CoT (val/teacher_acc)
        self._validations = 0
        self._last_val_acc: float | None = None
        self._last_teacher_acc: float | None = None
        self._val_stats: dict[str, torch.Tensor] = {}
        self.val_tensors: dict[str, torch.Tensor] = {}  # the last validation's tensors for figures (kv_cosine)
        self._stops: set[int] | None = None
        self.strict_loading = False  # checkpoints omit frozen base weights; see on_load_checkpoint

    @property
    def backbone(self) -> torch.nn.Module:
        """The (LoRA) backbone: the method's (the method is the model)."""
        return self.method.backbone

    @property
    def student(self) -> torch.nn.Module | None:
        """The method's latent student (None for methods without latents)."""
        return self.method.student

    # losses --------------------------------------------------------------------------------------
    def compute_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Every loss term of the batch (scalars), keyed by its logged name without the stage prefix."""
        return self.method(batch)[0]

    def losses_with_per_sample(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Batch values and per-sample values (B,) of every term."""
        return self.method(batch)

    def loss_weights(self) -> dict[str, float]:
        """The weight of each logged term in ``loss`` (per-step KV terms carry ``alpha2 * w_t``)."""
        return self.method.loss_weights()

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

    def on_fit_start(self) -> None:
        """``model.compile=step`` runs on one device, with Lightning's single-device strategy: several processes
        (``trainer.devices`` of auto or above 1 picks DDP without a ``strategy=``) or a strategy named otherwise stop
        here, before any step."""
        strategy = self.trainer.strategy
        if self.method.compiled_losses is not None and not isinstance(strategy, SingleDeviceStrategy):
            raise ConfigValueError(
                f"model.compile=step compiles the step on one device only, and this run's strategy is "
                f"{type(strategy).__name__} with {self.trainer.world_size} process(es): set trainer.devices=1 and "
                "strategy=single, or use model.compile=decoder"
            )

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        terms = self.compute_losses(batch)
        if not torch.isfinite(terms["loss"]):
            bad = [k for k, v in terms.items() if k != "loss" and not torch.isfinite(v).all()]
            raise NonFiniteError(
                f"training stopped at step {self.global_step}: the loss is not finite (non-finite terms: "
                f"{', '.join(bad) or 'none of the terms, only their weighted sum'}); no checkpoint was written from "
                f"this step; {self._kept()}. Look at {LOOK_AT} and trainer.precision"
            )
        self._log_terms("train", terms, batch.size)
        return terms["loss"]

    def on_before_optimizer_step(self, optimizer) -> None:
        """A non-finite gradient stops training before the optimizer writes it into the weights (fp16 AMP's
        scaler skips such steps itself, so it is left to it)."""
        if self._trainer is not None and str(self._trainer.precision).startswith("16"):
            return
        named = [(n, p.grad) for n, p in self.named_parameters() if p.grad is not None]
        if not named:
            return
        norms = torch.stack(torch._foreach_norm([g for _, g in named]))  # one sync for every tensor
        if not torch.isfinite(norms).all():  # a non-finite entry, or a norm too large for the dtype
            bad = [n for (n, _), ok in zip(named, torch.isfinite(norms).tolist(), strict=True) if not ok]
            raise NonFiniteError(
                f"training stopped at step {self.global_step}: non-finite gradient in {len(bad)} tensors (first: "
                f"{bad[0]}) with a finite loss; the weights were not updated; {self._kept()}. Look at {LOOK_AT}"
            )

    def _all_ranks_done(self, done: bool) -> bool:
        """True when every rank's decoding is done: ranks keep running passes until then (sharded weights are
        gathered in each pass, so a rank that stopped early would leave the others waiting)."""
        return bool(self.all_gather(torch.tensor(done, device=self.device)).all())

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        terms, stats = self.method.validation_losses(batch)
        for k, v in stats.items():
            self._val_stats[k] = self._val_stats[k] + v if k in self._val_stats else v
        self._log_terms("val", terms, batch.size)
        if self._val_acc_due() and batch_idx < self.val_acc_cfg.num_batches:
            self.val_accuracy.update(self.predict_step(batch, batch_idx), batch.gold.tolist())
            if self.student is not None:
                self.val_teacher_accuracy.update(self.teacher_answers(batch), batch.gold.tolist())

    def teacher_answers(self, batch: Batch) -> list[float | None]:
        """The CoT teacher's greedy answers (the backbone, with its adapters unless the teacher is frozen)."""
        return self.predict_step(batch, decoder="teacher")

    def predict_step(self, batch: Batch, batch_idx: int = 0, decoder: str = "student") -> list[float | None]:
        """The method's greedy answers to the batch's questions with ``decoder``, parsed as numbers
        (``trainer.predict`` and ``val/acc`` use it; ``eval.py`` decodes with the same ``method.generate``)."""
        if self._stops is None:  # once per tokenizer
            self._stops = stop_token_ids(self.tokenizer)
        gen = self.method.generate(
            batch.s_q_ids,
            batch.s_q_mask,
            self.val_acc_cfg.max_new_tokens,
            self.val_acc_cfg.max_cot_tokens,
            self._stops,
            sync=self._all_ranks_done if self._trainer is not None and self._trainer.world_size > 1 else None,
            decoder=decoder,
        )
        return [extract_answer(self.method.answer_text(t, decoder), self.answer_prompt) for t in gen.texts]

    def _val_acc_due(self) -> bool:
        every = self.val_acc_cfg.every_n_validations
        return self.val_acc_cfg.num_batches > 0 and every > 0 and self._validations % every == 0

    def on_validation_epoch_start(self) -> None:
        self._val_stats = {}

    def on_validation_epoch_end(self) -> None:
        stats = self._val_stats
        if stats and self.trainer is not None and self.trainer.world_size > 1:
            stats = {k: self.all_gather(v).sum(0) for k, v in stats.items()}
        metrics, self.val_tensors = self.method.summarize(stats)
        for k, v in metrics.items():
            self.log(f"val/{k}", v)
        if self._val_acc_due() and int(self.val_accuracy.total) > 0:
            self._last_val_acc = float(self.val_accuracy.compute())
        if self._val_acc_due() and int(self.val_teacher_accuracy.total) > 0:
            self._last_teacher_acc = float(self.val_teacher_accuracy.compute())
        self.val_accuracy.reset()
        self.val_teacher_accuracy.reset()
        self._validations += 1
        if self._last_val_acc is not None:
            self.log("val/acc", self._last_val_acc, prog_bar=True)
        if self._last_teacher_acc is not None:
            self.log("val/teacher_acc", self._last_teacher_acc)

    # optimisation --------------------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.optim_cfg
        lr, scale, wd = cfg.lr, cfg.latent_lr_scale, cfg.weight_decay
        groups = [{"params": [], "weight_decay": wd}, {"params": [], "weight_decay": 0.0}]
        if scale != 1.0:  # own groups only when scaled, so that a default run's optimizer state keeps its layout
            groups += [
                {"params": [], "weight_decay": wd, "lr": lr * scale},
                {"params": [], "weight_decay": 0.0, "lr": lr * scale},
            ]
        for name, p in self.named_parameters():
            if p.requires_grad:
                latent = scale != 1.0 and name.startswith(("method.student.special", "method.student.prj."))
                decay = p.dim() >= 2 and not name.startswith("method.student.special")
                groups[2 * latent + (not decay)]["params"].append(p)
        opt = torch.optim.AdamW(
            groups[:2] + [g for g in groups[2:] if g["params"]],
            lr=lr,
            betas=tuple(cfg.betas),
        )
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(round(cfg.warmup_ratio * total))
        sched = get_cosine_schedule_with_warmup(opt, warmup, max(total, 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Norm clipping under FSDP goes through FSDP's own ``clip_grad_norm_`` (the gradients are sharded, and
        Lightning's norm clipping refuses FSDP); everything else clips as Lightning does."""
        from lightning.pytorch.strategies import FSDPStrategy

        fsdp = self._trainer is not None and isinstance(self._trainer.strategy, FSDPStrategy)
        if fsdp and gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            self.trainer.strategy.model.clip_grad_norm_(float(gradient_clip_val))
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # checkpoints ---------------------------------------------------------------------------------
    def _kept(self) -> str:
        """What a stopped run leaves: the newest checkpoint already in the run's folder, or that there is none."""
        trainer = self._trainer
        folder = Path(trainer.default_root_dir) / "checkpoints" if trainer is not None else None
        saved = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if folder and folder.is_dir() else []
        return f"the checkpoint saved before it is kept ({saved[-1]})" if saved else "no checkpoint had been saved yet"

    def trainable_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        bad = [k for k, v in checkpoint["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise NonFiniteError(
                f"not writing a checkpoint at step {self.global_step}: {len(bad)} weight tensors are not finite "
                f"(first: {bad[0]}); {self._kept()}. Look at {LOOK_AT}"
            )
        extra: dict[str, Any] = {"trainable": sorted(keep)}
        if not self.model_cfg.name_or_path and not self.model_cfg.tokenizer_path:
            with tempfile.TemporaryDirectory() as d:
                self.tokenizer.save_pretrained(d)
                extra["tokenizer_files"] = {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file()}
        extra["rng"] = {"torch": torch.get_rng_state()}  # LoRA dropout draws from it; resume continues it
        if torch.cuda.is_available():
            extra["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        if self._trainer is not None and self._trainer.world_size > 1:  # each process draws its own dropout masks
            extra["rng"]["torch_per_rank"] = self.all_gather(torch.get_rng_state().to(self.device)).cpu()
            if torch.cuda.is_available():
                extra["rng"]["cuda_per_rank"] = self.all_gather(torch.cuda.get_rng_state().to(self.device)).cpu()
        checkpoint[CKPT_KEY] = extra

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get(CKPT_KEY, {}).get("rng")
        if rng and self._trainer is not None:  # resuming a fit (not a plain reload for evaluation)
            rank, world = self._trainer.global_rank, self._trainer.world_size
            per_rank = rng.get("torch_per_rank")
            same_world = per_rank is not None and per_rank.shape[0] == world
            torch.set_rng_state((per_rank[rank] if same_world else rng["torch"]).cpu().clone())  # a row: own storage
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
                if same_world and "cuda_per_rank" in rng:
                    torch.cuda.set_rng_state(rng["cuda_per_rank"][rank].cpu().clone())
        if self._trainer is not None and "hyper_parameters" in checkpoint:  # resuming: the same model and objective
            problem = incompatible(with_method(checkpoint["hyper_parameters"]), dict(self.hparams))
            if problem:
                raise ResumeError(resume_message(str(self._trainer.ckpt_path), problem))
        checkpoint["state_dict"] = with_method_prefix(checkpoint["state_dict"])
        missing = self.trainable_names() - set(checkpoint["state_dict"])
        if missing:
            first = sorted(missing)[:5]
            raise ResumeError(f"the checkpoint lacks trained parameters {first}...: it is not from this setup")
