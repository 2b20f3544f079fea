"""`sstkd verify`: the oracle passes correct kernels and fails wrong ones."""
import dataclasses

import torch

from sstkd import verify
from sstkd.ops import lp_dec
from sstkd.ops.specs import Case, get_spec


def _case(perturb: float):
    def run(x, backend):
        low, band = lp_dec(x, backend="torch")
        if backend != "torch":  # a "kernel" that is off by `perturb` in its forward
            low = low + perturb * low.detach().abs().max()
        return low, band

    return Case(dataclasses.replace(get_spec("lp_dec"), op=run), "1x2x12x8", (1, 2, 12, 8), {})


def test_oracle_passes_exact_and_fails_wrong():
    for dtype in (torch.float32, torch.bfloat16):
        assert verify.check(_case(0.0), "fake", dtype, "contiguous", torch.device("cpu")).ok
        assert not verify.check(_case(0.05), "fake", dtype, "contiguous", torch.device("cpu")).ok
    # float32 is held to ~1e-5 relative: 1e-4 is a failure
    assert not verify.check(_case(1e-4), "fake", torch.float32, "channels_last", torch.device("cpu")).ok


def test_verify_triton_lp_interpreted(capsys):
    import argparse

    p = argparse.ArgumentParser()
    verify.add_arguments(p)
    rc = verify.main(p.parse_args(["--backend", "triton", "--op", "lp_dec", "--dtype", "fp32", "--dtype", "bf16"]))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "lp_dec" in out and "FAIL" not in out and " 0 failed" in out
