"""Teachers for self-distillation (SDPO, arXiv 2601.20802, Sec. 3 "teacher regularisation").

The teacher is the student's own model evaluated on the re-prompted input (:mod:`sdpo.reprompt`, run by
:mod:`sdpo.forward`); how its weights relate to the student's is ``SelfDistillationConfig.teacher_regularization``:

- ``"ema"`` (:class:`EmaTeacher`): θ_T ← (1−τ)·θ_T + τ·θ_S once per training step. For a full model a frozen
  copy; for a peft LoRA model a second adapter ``"teacher"`` on the same base (EMA over adapter weights only).
- ``"trust-region"`` (:class:`TrustRegionTeacher`): logits = lerp(ref_logits, student_logits, τ) with ref the
  frozen initial model (for LoRA: the base with the adapter disabled) and the student under no_grad.
- ``"live"`` (:class:`LiveTeacher`): the current student under no_grad.
- ``"base"`` (:class:`BaseTeacher`): the frozen initial policy (TRL's ``teacher_model_kind: base``, the paper's
  "frozen initial teacher"): for a peft model the base with the adapters disabled (no copy, no EMA step), for a
  full model a frozen copy taken at construction (:class:`FrozenBase`, which also serves as the reference policy
  of a KL penalty).

Every teacher returns response-aligned logits [B, T, V] without grad (:func:`sdpo.forward.response_logits`)
and has ``state_dict()`` / ``load_state_dict()`` so a resumed run continues with the same teacher.
Teacher forwards run with every module in eval mode (no dropout); the previous train/eval flags are restored.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from sdpo.config import SelfDistillationConfig
from sdpo.forward import ResponseBatch, eval_mode, plain_head_weight, response_hidden, response_logits

if TYPE_CHECKING:
    from peft import PeftModel

TEACHER_ADAPTER = "teacher"


def is_peft_model(model: nn.Module) -> bool:
    """A peft model (LoRA adapters injected into a transformers model)."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter") and hasattr(model, "set_adapter")


def _peft(model: nn.Module) -> PeftModel:
    """``model`` as the peft model ``is_peft_model`` found it to be (for peft's own methods)."""
    return cast("PeftModel", model)


def _frozen_copy(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model)
    twin.eval()
    twin.requires_grad_(False)
    return twin


def _adapter_params(model: nn.Module, adapter: str) -> dict[str, nn.Parameter]:
    """Parameters of one peft adapter, keyed by their name with the adapter segment replaced by ``{}``."""
    seg = f".{adapter}."
    out = {}
    for name, p in model.named_parameters():
        if seg in name:
            out[name.replace(seg, ".{}.", 1)] = p
    return out


class EmaTeacher:
    """θ_T ← (1−τ)·θ_T + τ·θ_S, applied by :meth:`update` once per training step.

    Full model: the teacher is a separate frozen deep copy of the student. peft model: the teacher is a second
    adapter ``"teacher"`` on the same (shared, frozen) base, initialised from the student's adapter; the EMA runs
    over adapter weights only. Its forward switches the active adapter to ``"teacher"`` under no_grad and then
    restores the student's adapter and every parameter's ``requires_grad`` flag, so the student's trainable set
    and optimizer state are unaffected. The LoRA EMA averages the factors A and B separately (as TRL's EMA
    adapter does), so the teacher's weight update is EMA(B)·EMA(A), which is not the EMA of the products B·A
    the student went through; a full-model EMA averages the weights themselves.

    Precision: with τ = 0.01–0.05 a bfloat16 teacher cannot represent one EMA step (its relative precision is
    2^-8), so the step would round away. ``fp32_master`` (default: whenever a teacher weight is below float32)
    keeps a float32 master copy of the teacher weights, steps it, and writes it rounded into the teacher; it
    costs 4 bytes per teacher weight (adapter weights only for LoRA, which peft keeps in float32 anyway).
    """

    kind = "ema"

    def __init__(self, model: nn.Module, update_rate: float, *, fp32_master: bool | None = None):
        self.update_rate = float(update_rate)
        self.is_peft = is_peft_model(model)
        self.model: nn.Module
        if self.is_peft:
            self.model = peft = _peft(model)
            self.student_adapter: str = peft.active_adapter
            if TEACHER_ADAPTER in peft.peft_config:
                raise ValueError(f"the model already has an adapter named {TEACHER_ADAPTER!r}")
            grads = {n: p.requires_grad for n, p in model.named_parameters()}
            peft.add_adapter(TEACHER_ADAPTER, copy.deepcopy(peft.peft_config[self.student_adapter]))
            peft.set_adapter(self.student_adapter)
            for n, p in model.named_parameters():
                p.requires_grad_(grads.get(n, False))  # teacher adapter frozen; student flags as before
            teacher, student = _adapter_params(model, TEACHER_ADAPTER), _adapter_params(model, self.student_adapter)
            if teacher.keys() != student.keys() or not teacher:
                raise ValueError("the teacher adapter does not mirror the student's adapter parameters")
            with torch.no_grad():
                for k, t in teacher.items():
                    t.copy_(student[k])
        else:
            self.model = _frozen_copy(model)
        if fp32_master is None:
            fp32_master = any(p.dtype != torch.float32 for p in self._teacher_params().values())
        self.master: dict[str, torch.Tensor] | None = (
            {k: p.detach().float().clone() for k, p in self._teacher_params().items()} if fp32_master else None
        )

    def _teacher_params(self) -> dict[str, nn.Parameter]:
        """The teacher's own weights by name (adapter names use ``{}`` for the adapter segment)."""
        if self.is_peft:
            return _adapter_params(self.model, TEACHER_ADAPTER)
        return dict(self.model.named_parameters())

    @contextmanager
    def _teacher_active(self) -> Iterator[None]:
        if not self.is_peft:
            yield
            return
        grads = [(p, p.requires_grad) for p in self.model.parameters()]
        _peft(self.model).set_adapter(TEACHER_ADAPTER)
        try:
            with eval_mode(self.model):
                yield
        finally:
            _peft(self.model).set_adapter(self.student_adapter)
            for p, flag in grads:
                p.requires_grad_(flag)

    @torch.no_grad()
    def logits(self, batch: ResponseBatch) -> torch.Tensor:
        """Teacher logits at the response positions, [B, T, V], no grad."""
        with self._teacher_active():
            return response_logits(self.model, batch)

    @torch.no_grad()
    def hidden(self, batch: ResponseBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden [B, T, H], LM-head weight [V, H]) of the teacher, for a fused loss; no grad."""
        with self._teacher_active():
            return response_hidden(self.model, batch), plain_head_weight(self.model).detach()

    @torch.no_grad()
    def update(self, student: nn.Module, weights: dict[str, torch.Tensor] | None = None) -> None:
        """One EMA step towards ``student`` (call once per training step, after a real optimizer step).

        weights: the student's weights by parameter name when their real values are kept elsewhere: the float32
        masters of a bfloat16 / float16 full fine-tune (``sdpo.precision.master_weights``), so that the
        teacher's float32 master moves towards the student's float32 master rather than its rounded copy.
        Full models only (LoRA adapters are float32 themselves)."""
        tau = self.update_rate
        teacher = self._teacher_params()
        if self.is_peft:
            if student is not self.model:
                raise ValueError("EmaTeacher(LoRA): update() must get the same peft model the teacher lives in")
            if weights is not None:
                raise ValueError("EmaTeacher(LoRA): weights are for full models (the adapters are the weights)")
            student_params: Mapping[str, torch.Tensor] = _adapter_params(self.model, self.student_adapter)
        else:
            student_params = weights if weights is not None else dict(student.named_parameters())
        if teacher.keys() != student_params.keys():
            raise ValueError("EmaTeacher: student parameters do not match the teacher's")
        for k, t in teacher.items():
            s = student_params[k].detach().to(t.device).float()
            if self.master is not None:
                self.master[k].lerp_(s, tau)
                t.copy_(self.master[k])
            else:
                t.copy_(torch.lerp(t.float(), s, tau))

    def state_dict(self) -> dict[str, Any]:
        """Teacher weights (the float32 master when kept, else the weights themselves) and the rate."""
        source = self.master if self.master is not None else self._teacher_params()
        weights = {k: v.detach().clone() for k, v in source.items()}
        return {"kind": self.kind, "update_rate": self.update_rate, "peft": self.is_peft, "weights": weights}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(state, self.kind, peft=self.is_peft)
        params = self._teacher_params()
        if params.keys() != state["weights"].keys():
            missing = sorted(params.keys() ^ state["weights"].keys())[:3]
            raise ValueError(f"EmaTeacher.load_state_dict: teacher parameter names do not match (e.g. {missing})")
        self.update_rate = float(state["update_rate"])
        for k, p in params.items():
            saved = state["weights"][k]
            if self.master is not None:
                self.master[k].copy_(saved)
            p.copy_(saved)


class TrustRegionTeacher:
    """Teacher logits = lerp(ref_logits, student_logits, τ) = ref + τ·(student − ref), both on the teacher input.

    ref is the frozen initial model: for a peft model the base with the adapter disabled (no copy), for a full
    model a frozen deep copy taken at construction (checkpointed by :meth:`state_dict`).
    """

    kind = "trust-region"

    def __init__(self, model: nn.Module, update_rate: float):
        self.update_rate = float(update_rate)
        self.student = model
        self.is_peft = is_peft_model(model)
        self.ref = None if self.is_peft else _frozen_copy(model)

    def _ref_logits(self, batch: ResponseBatch) -> torch.Tensor:
        if self.ref is None:  # peft: the base with the adapter disabled
            with _peft(self.student).disable_adapter(), eval_mode(self.student):
                return response_logits(self.student, batch)
        return response_logits(self.ref, batch)

    @torch.no_grad()
    def logits(self, batch: ResponseBatch) -> torch.Tensor:
        """[B, T, V], no grad."""
        ref = self._ref_logits(batch)
        with eval_mode(self.student):
            student = response_logits(self.student, batch)
        return torch.lerp(ref, student, self.update_rate)

    @torch.no_grad()
    def hidden(self, batch: ResponseBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Only for peft models whose LM head is not adapted: then both sides share the head W and
        lerp(h_ref·Wᵀ, h_s·Wᵀ, τ) = lerp(h_ref, h_s, τ)·Wᵀ."""
        if not self.is_peft:
            raise NotImplementedError("TrustRegionTeacher.hidden: the full-model ref has its own LM head, so the "
                                      "teacher logits are not hidden @ one head; use logits() (fused_lm_head=false)")
        weight = plain_head_weight(self.student).detach()
        with _peft(self.student).disable_adapter(), eval_mode(self.student):
            ref = response_hidden(self.student, batch)
        with eval_mode(self.student):
            student = response_hidden(self.student, batch)
        return torch.lerp(ref, student, self.update_rate), weight

    def update(self, student: nn.Module, weights: dict[str, torch.Tensor] | None = None) -> None:
        """No-op: the trust region follows the live student."""

    def state_dict(self) -> dict[str, Any]:
        ref = None if self.ref is None else {k: v.detach().clone() for k, v in self.ref.state_dict().items()}
        return {"kind": self.kind, "update_rate": self.update_rate, "peft": self.is_peft, "weights": ref}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(state, self.kind, peft=self.is_peft)
        self.update_rate = float(state["update_rate"])
        if self.ref is not None:
            self.ref.load_state_dict(state["weights"])


class LiveTeacher:
    """The current student under no_grad (no regularisation)."""

    kind = "live"

    def __init__(self, model: nn.Module):
        self.student = model

    @torch.no_grad()
    def logits(self, batch: ResponseBatch) -> torch.Tensor:
        with eval_mode(self.student):
            return response_logits(self.student, batch)

    @torch.no_grad()
    def hidden(self, batch: ResponseBatch) -> tuple[torch.Tensor, torch.Tensor]:
        with eval_mode(self.student):
            return response_hidden(self.student, batch), plain_head_weight(self.student).detach()

    def update(self, student: nn.Module, weights: dict[str, torch.Tensor] | None = None) -> None:
        """No-op."""

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(state, self.kind, peft=None)


class FrozenBase:
    """The initial policy, frozen: the reference of a KL penalty (``UpdateConfig.kl_coef``) and the base teacher.

    peft model: the model itself with every adapter disabled (no copy: the base weights never change).
    Full model: a frozen deep copy taken at construction. It costs one more model's weights in the model's dtype
    (2 bytes per weight in bfloat16: 16 GB for an 8B model), and nothing per step: no optimizer state, no EMA
    update, no float32 master (an EMA teacher of a bfloat16 model costs the same copy plus a 4-byte float32
    master per weight and one EMA step per training step). The copy is part of the checkpoint
    (:meth:`state_dict`), so a resumed run keeps the run's initial policy, not the resumed one.
    Forwards run in eval mode (no dropout); flags are restored.
    """

    kind = "reference"

    def __init__(self, model: nn.Module):
        self.student = model
        self.is_peft = is_peft_model(model)
        self.ref = None if self.is_peft else _frozen_copy(model)

    @contextmanager
    def _active(self) -> Iterator[nn.Module]:
        if self.ref is None:  # peft: the base with the adapter disabled
            with _peft(self.student).disable_adapter(), eval_mode(self.student):
                yield self.student
        else:
            with eval_mode(self.ref):
                yield self.ref

    @torch.no_grad()
    def logits(self, batch: ResponseBatch) -> torch.Tensor:
        """[B, T, V] at the response positions, no grad."""
        with self._active() as m:
            return response_logits(m, batch)

    @torch.no_grad()
    def hidden(self, batch: ResponseBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden [B, T, H], LM-head weight [V, H]): a full copy has its own head; a peft base shares the
        student's (not adapted: ``fused_lm_head`` refuses an adapted head)."""
        with self._active() as m:
            return response_hidden(m, batch), plain_head_weight(m).detach()

    def update(self, student: nn.Module, weights: dict[str, torch.Tensor] | None = None) -> None:
        """No-op: the initial policy never moves."""

    def state_dict(self) -> dict[str, Any]:
        ref = None if self.ref is None else {k: v.detach().clone() for k, v in self.ref.state_dict().items()}
        return {"kind": self.kind, "peft": self.is_peft, "weights": ref}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(state, self.kind, peft=self.is_peft)
        if self.ref is not None:
            self.ref.load_state_dict(state["weights"])


class BaseTeacher(FrozenBase):
    """The frozen initial policy as the teacher (``teacher_regularization: base``): its logits on the teacher
    input. Costs as :class:`FrozenBase` (nothing for LoRA, one frozen copy for full fine-tuning)."""

    kind = "base"


Teacher = EmaTeacher | TrustRegionTeacher | LiveTeacher | BaseTeacher


def _check_state(state: dict[str, Any], kind: str, *, peft: bool | None) -> None:
    if state.get("kind") != kind:
        raise ValueError(f"teacher state is for teacher_regularization={state.get('kind')!r}, "
                         f"this run uses {kind!r}")
    if peft is not None and state.get("peft") != peft:
        raise ValueError(f"teacher state was saved for a {'LoRA' if state.get('peft') else 'full'} model, "
                         f"this run trains a {'LoRA' if peft else 'full'} model")


def make_teacher(cfg: SelfDistillationConfig, model: nn.Module) -> Teacher:
    """The teacher of ``cfg.teacher_regularization`` for the student ``model`` (τ = ``cfg.teacher_update_rate``).
    Build it before the first optimizer step: EMA and trust-region start from the current weights."""
    if cfg.teacher_regularization == "ema":
        return EmaTeacher(model, cfg.teacher_update_rate)
    elif cfg.teacher_regularization == "trust-region":
        return TrustRegionTeacher(model, cfg.teacher_update_rate)
    elif cfg.teacher_regularization == "live":
        return LiveTeacher(model)
    elif cfg.teacher_regularization == "base":
        return BaseTeacher(model)
    raise ValueError(f"teacher_regularization: got {cfg.teacher_regularization!r}; "
                     "allowed values are 'ema', 'trust-region', 'live', 'base'")


def make_reference(model: nn.Module, teacher: Teacher | None = None) -> FrozenBase:
    """The reference (initial) policy of a KL penalty for the student ``model``: the teacher itself when it is
    the frozen base (one copy serves both), else a :class:`FrozenBase` (for peft no copy). Build it before the
    first optimizer step."""
    if isinstance(teacher, FrozenBase):
        return teacher
    return FrozenBase(model)
