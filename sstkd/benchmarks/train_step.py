"""Distillation overhead of one training step (issue 7).

Four variants of one SGD step of the student, all on the same models and inputs:

* ``student``: the student alone (cross-entropy + 0.4 × auxiliary CE);
* ``kd``: + the frozen teacher's forward, pixel-wise KD and the holistic
  (adversarial) loss, including the critic's update (``SSTKDConfig`` preset ``"kd"``);
* ``sstkd_reference``: + the texture losses (CDM ``L_str``, DTIEM ``L_sta``)
  on the reference ops (``backend="torch"``);
* ``sstkd_fused``: the same on the fused ops (``backend="auto"``, which picks
  the Triton / CUDA kernels present for these tensors); skipped with the
  reason when no texture op has a fused backend here.

Reported: median step time, IQR and peak memory of each variant;
``overhead = (step − student step) / student step``; the texture part
``sstkd − kd`` on each backend and the fused-over-reference speedup of it.

Shapes: on a GPU the real pair (PSPNet-ResNet101 with deep stem → PSPNet-ResNet18,
batch 8, 512×512 crops, 19 classes); on the CPU a scaled-down pair (narrow
backbones of one width, small crops) so a step takes well under a second.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F

from sstkd.benchmarks.timing import measure_peak_memory, time_fn

VARIANTS = ("student", "kd", "sstkd_reference", "sstkd_fused")
TEXTURE_OPS = ("contourlet_energy", "quantize_count", "reproject")  # what SSTKDLoss calls


@dataclasses.dataclass(frozen=True)
class TrainStepConfig:
    teacher: str = "pspnet_resnet101"
    student: str = "pspnet_resnet18"
    teacher_width: int = 64
    student_width: int = 64
    teacher_deep_stem: bool = True
    batch: int = 8
    crop: tuple[int, int] = (512, 512)
    num_classes: int = 19
    warmup: int = 3
    repeat: int = 10
    max_seconds: float | None = 60.0

    @staticmethod
    def for_run(device: torch.device, quick: bool) -> "TrainStepConfig":
        if device.type == "cuda" and not quick:
            return TrainStepConfig()
        # One width for both networks keeps the teacher / student cost ratio of the real pair.
        if quick:
            return TrainStepConfig(teacher_width=8, student_width=8, batch=2, crop=(64, 64), warmup=1, repeat=5,
                                   max_seconds=5.0)
        return TrainStepConfig(teacher_width=16, student_width=16, batch=2, crop=(128, 128), warmup=2, repeat=8,
                               max_seconds=30.0)


def fused_backends(device: torch.device) -> dict[str, str]:
    """The backend ``"auto"`` resolves to for each texture op of ``SSTKDLoss`` on ``device``."""
    from sstkd.ops import dispatch

    probe = torch.empty(1, device=device)
    return {op: dispatch.resolve_backend(op, "auto", probe) for op in TEXTURE_OPS}


def build_pair(device: torch.device, cfg: TrainStepConfig):
    """``(student, teacher, batches)``: random-weight models (teacher frozen, in eval) and two random batches."""
    from sstkd.models import build_model

    gen = torch.Generator(device="cpu").manual_seed(0)
    teacher = build_model(cfg.teacher, cfg.num_classes, base_width=cfg.teacher_width,
                          deep_stem=cfg.teacher_deep_stem).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = build_model(cfg.student, cfg.num_classes, base_width=cfg.student_width).to(device).train()
    h, w = cfg.crop
    batches = [(torch.randn(cfg.batch, 3, h, w, generator=gen).to(device),
                torch.randint(0, cfg.num_classes, (cfg.batch, h, w), generator=gen).to(device))
               for _ in range(2)]
    return student, teacher, batches


class TrainStep:
    """One training step of one variant; ``__call__(batch)`` runs it."""

    def __init__(self, variant: str, student, teacher, cfg: TrainStepConfig, device: torch.device):
        from sstkd.distill import FeatureTap, SSTKDConfig, SSTKDLoss

        self.variant = variant
        self.student, self.teacher = student, teacher
        params = list(student.parameters())
        self.criterion = None
        self.d_opt = None
        if variant != "student":
            preset = "kd" if variant == "kd" else "sstkd"
            backend = {"kd": "auto", "sstkd_reference": "torch", "sstkd_fused": "auto"}[variant]
            s_ch = student.backbone.channels[0]
            t_ch = teacher.backbone.channels[0]
            self.criterion = SSTKDLoss(s_ch, t_ch, cfg.num_classes,
                                       SSTKDConfig.preset(preset, backend=backend)).to(device)
            params += self.criterion.student_side_parameters()
            self.d_opt = self.criterion.make_discriminator_optimizer()
            self.s_tap = FeatureTap(student, {"low": "backbone.layer1"})
            self.t_tap = FeatureTap(teacher, {"low": "backbone.layer1"}, detach=True)
        self.opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)

    def __call__(self, batch):
        x, y = batch
        out = self.student(x)
        loss = F.cross_entropy(out["out"], y, ignore_index=255)
        if "aux" in out:
            loss = loss + 0.4 * F.cross_entropy(out["aux"], y, ignore_index=255)
        if self.criterion is not None:
            with torch.no_grad():
                t_out = self.teacher(x)
            terms = self.criterion(out["out"], t_out["out"], self.s_tap["low"], self.t_tap["low"], target=y)
            loss = loss + terms["loss"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.d_opt is not None:
            self.criterion.discriminator_step(out["out"].detach(), t_out["out"], self.d_opt)
        return None

    def close(self):
        if self.criterion is not None:
            self.s_tap.remove()
            self.t_tap.remove()


def run_train_step(device: torch.device, cfg: TrainStepConfig, *, variants=VARIANTS,
                   log: Callable[[str], None] = print, measure_memory: bool = True) -> dict:
    """Time every variant; returns ``{"status", "config", "variants": [...], ...}`` (never raises for
    missing models, losses or backends: ``status`` says ``skipped``/``error`` with the reason)."""
    result: dict = {"status": "ok", "reason": "", "device": str(device),
                    "config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()},
                    "variants": []}
    try:
        from sstkd.distill import SSTKDLoss  # noqa: F401
        from sstkd.models import build_model  # noqa: F401
    except Exception as e:
        result.update(status="skipped", reason=f"models/distillation do not import: {type(e).__name__}: {e}")
        return result
    try:
        student, teacher, batches = build_pair(device, cfg)
    except Exception as e:
        result.update(status="error", reason=f"building the models: {type(e).__name__}: {e}")
        return result

    fused = fused_backends(device)
    result["fused_backends"] = fused
    for variant in variants:
        entry = {"name": variant, "status": "ok", "reason": ""}
        if variant == "sstkd_fused" and all(b == "torch" for b in fused.values()):
            entry.update(status="skipped", reason=f"no fused backend for {', '.join(TEXTURE_OPS)} on {device.type} "
                                                  "(auto resolves every texture op to torch)")
            result["variants"].append(entry)
            log(f"train step {variant:<16} skipped: {entry['reason']}")
            continue
        step = None
        try:
            step = TrainStep(variant, student, teacher, cfg, device)
            stats = time_fn(step, batches, device=device, warmup=cfg.warmup, repeat=cfg.repeat,
                            max_seconds=cfg.max_seconds)
            peak = measure_peak_memory(lambda: step(batches[0]), device) if measure_memory else None
            entry.update(stats.to_dict(), peak_mem_bytes=peak)
            log(f"train step {variant:<16} {stats.median_ms:9.1f} ms ± {stats.iqr_ms:.1f} (IQR)"
                + ("" if peak is None else f"  peak {peak / 2**20:.1f} MiB"))
        except torch.cuda.OutOfMemoryError:
            entry.update(status="skipped", reason="out of memory")
            if device.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as e:
            entry.update(status="error", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            log(f"train step {variant:<16} error: {entry['reason']}")
        finally:
            if step is not None:
                step.close()
        result["variants"].append(entry)
    summarize_overheads(result)
    return result


def summarize_overheads(result: dict) -> None:
    """Fill ``overhead`` per variant, ``texture_ms`` per backend and ``fused_texture_speedup``."""
    t = {v["name"]: v["median_ms"] for v in result["variants"] if v.get("status") == "ok"}
    base = t.get("student")
    for v in result["variants"]:
        if v.get("status") == "ok" and base:
            v["overhead"] = (v["median_ms"] - base) / base
    if "kd" in t:
        for name, key in (("sstkd_reference", "texture_ms_reference"), ("sstkd_fused", "texture_ms_fused")):
            if name in t:
                result[key] = t[name] - t["kd"]
                if base:
                    result[key.replace("_ms_", "_overhead_")] = (t[name] - t["kd"]) / base
    ref, fus = result.get("texture_ms_reference"), result.get("texture_ms_fused")
    if ref is not None and fus is not None and fus > 0:
        result["fused_texture_speedup"] = ref / fus
