"""Training and evaluation machinery (trainer, evaluator, inference, checkpoints, config, distributed).

Import-light on purpose: names are resolved from their submodules on first
access, so ``import sstkd.engine`` (e.g. by ``sstkd info``) loads nothing heavy
and never imports the trainer.
"""
import importlib

_LAZY = {
    "SegMetrics": "sstkd.engine.evaluator",
    "ConfusionMatrix": "sstkd.engine.evaluator",
    "evaluate": "sstkd.engine.evaluator",
    "format_metrics_table": "sstkd.engine.evaluator",
    "predict": "sstkd.engine.inference",
    "whole_inference": "sstkd.engine.inference",
    "slide_inference": "sstkd.engine.inference",
    "model_logits": "sstkd.engine.inference",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sstkd.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_LAZY)
