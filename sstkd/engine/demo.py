"""``sstkd demo``: teacher -> student distillation on synthetic textures, on the CPU, over several seeds.

With the configs in ``configs/demo/``, it trains

1. a teacher (a wider network) on :class:`~sstkd.data.SyntheticTextures` (first seed);
2. the same small student three ways per seed: alone (``baseline``), with
   response + holistic distillation (``kd``) and with SSTKD (``sstkd``: + the
   structural and statistical texture terms), each over every seed (default
   0, 1, 2; for a seed, the three students share the initialization and the
   data order).

The runs go to parallel worker processes (one per core by default; the
baselines train beside the teacher, the distilled students once it is done).
It prints a table (mIoU per seed, mean ± sample standard deviation, seconds
per iteration) and a plain verdict on whether SSTKD beats KD beyond the seed
spread, and writes ``OUT/report.md`` and ``OUT/figure.png`` (inputs, ground
truth, the first seed's predictions, and the teacher's contourlet sub-bands
and texture histogram for one image).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

__all__ = ["add_arguments", "main", "run_demo", "demo_config_dir", "RUNS", "STUDENTS", "compare", "parse_seeds"]

RUNS = ("teacher", "baseline", "kd", "sstkd")
STUDENTS = ("baseline", "kd", "sstkd")
DEFAULT_SEEDS = (0, 1, 2)
LABELS = {"teacher": "teacher", "baseline": "student (baseline)", "kd": "student + KD (pixel + holistic)",
          "sstkd": "student + SSTKD (all terms)"}

# --quick: seconds instead of minutes (tests, smoke checks). Same code path, tiny sizes.
QUICK_OVERRIDES = [
    "train.iterations=2", "train.log_interval=1", "train.batch_size=2",
    "data.crop_size=[32, 32]", "data.options.size=32", "data.options.num_images=8",
    "data.val_options.num_images=2", "model.base_width=8",
]
QUICK_STUDENT_OVERRIDES = ["teacher.base_width=8"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=os.path.join("runs", "demo"), help="output directory (default runs/demo)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 iterations per run (seconds)")
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)),
                        help="comma-separated seeds of the students (default 0,1,2); the teacher uses the first")
    parser.add_argument("--seed", type=int, default=None, help="one seed only (same as --seeds N)")
    parser.add_argument("--workers", default="auto",
                        help="parallel training processes: a number, or 'auto' (default: one per CPU core, at most "
                             "one per run); 1 trains everything in this process")
    parser.add_argument("--configs", default=None, help="directory of the demo configs (default configs/demo)")
    parser.add_argument("--threads", default="auto",
                        help="torch CPU threads per process: a number, or 'auto' (default): the cores divided among "
                             "the workers, and 1 when other processes keep the cores busy (OpenMP threads then "
                             "spin-wait on each other and run several times slower)")


def demo_config_dir() -> str:
    """``configs/demo`` of the source tree (the package lives in ``<repo>/sstkd``)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(os.path.dirname(os.path.dirname(here)), "configs", "demo")


def parse_seeds(value) -> tuple[int, ...]:
    """``"0,1,2"`` or a sequence of ints -> a tuple of distinct ints (``--seeds``)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        seeds = tuple(int(str(v).strip()) for v in items if str(v).strip() != "")
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers, got {value!r}") from None
    if not seeds:
        raise ValueError(f"--seeds: no seed given in {value!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: repeated seed in {value!r}")
    return seeds


def _work_dir(out: str, run: str, seed: int) -> str:
    return os.path.join(out, run) if run == "teacher" else os.path.join(out, run, f"seed{seed}")


def _load(config_dir: str, run: str, out: str, quick: bool, seed: int | None = None) -> dict:
    from sstkd.engine.config import load_config

    overrides = [f"work_dir={_work_dir(out, run, seed)}", "device=cpu"]
    if seed is not None:
        overrides.append(f"seed={int(seed)}")
    if run != "teacher":
        overrides.append(f"teacher.checkpoint={os.path.join(out, 'teacher', 'final_student.pt')}")
    if quick:
        overrides += QUICK_OVERRIDES + (QUICK_STUDENT_OVERRIDES if run not in ("teacher", "baseline") else [])
    return load_config(os.path.join(config_dir, f"{run}.yaml"), overrides)


def _params(cfg: dict) -> int:
    from sstkd.engine.checkpoint import load_checkpoint

    ck = load_checkpoint(os.path.join(cfg["work_dir"], "final_student.pt"))
    return int(sum(v.numel() for k, v in ck["model"].items() if not k.endswith(("running_mean", "running_var",
                                                                                "num_batches_tracked"))))


def _train_job(run: str, seed: int, cfg: dict, threads: int | None) -> tuple[str, int, dict]:
    """Train one run (in a worker process or in this one) and return its numbers."""
    import torch

    from sstkd.engine.trainer import train

    if threads is not None:
        torch.set_num_threads(threads)
    t0, cpu0 = time.perf_counter(), time.process_time()
    summary = train(cfg, log=None, overwrite=True)  # the demo regenerates everything under --out
    metrics = summary["final_metrics"]
    return run, seed, {
        "mIoU": float(metrics["mIoU"]), "pixel_acc": float(metrics["pixel_acc"]),
        "sec_per_iter": float(summary["sec_per_iter"]), "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - cpu0,
        "iterations": summary["iterations"], "params": _params(cfg),
        "model": cfg["model"]["name"], "base_width": cfg["model"]["base_width"],
    }


def resolve_workers(value, jobs: int) -> int:
    """``--workers``: an int >= 1, or ``auto``: one per CPU core, at most ``jobs``."""
    if str(value) == "auto":
        return max(1, min(os.cpu_count() or 1, jobs))
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"--workers: expected a number or 'auto', got {value!r}") from None
    if n < 1:
        raise ValueError(f"--workers: must be >= 1, got {n}")
    return n


def _run_all(cfgs: dict, seeds: tuple[int, ...], workers: int, threads: int | None, log) -> dict:
    """Train every run; the teacher and the baselines first (they do not need the teacher), then KD and SSTKD."""
    results: dict[str, dict[int, dict]] = {run: {} for run in RUNS}

    def record(run, seed, r):
        results[run][seed] = r
        log(f"   {run:8s} seed {seed}: mIoU {100 * r['mIoU']:.2f}  {r['sec_per_iter']:.3f} s/it  ({r['wall_s']:.0f} s)")

    first = [("teacher", seeds[0])] + [("baseline", s) for s in seeds]
    distilled = [(run, s) for s in seeds for run in ("sstkd", "kd")]  # the longest runs first
    if workers <= 1:
        for run, seed in first + distilled:
            record(*_train_job(run, seed, cfgs[run][seed], threads))
        return results

    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # spawn: fresh interpreters (no forked torch thread pools); each imports torch once.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(_train_job, run, seed, cfgs[run][seed], threads): run for run, seed in first}
        teacher_done = False
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                pending.pop(fut)
                run, seed, r = fut.result()
                record(run, seed, r)
                if run == "teacher" and not teacher_done:
                    teacher_done = True
                    for drun, dseed in distilled:
                        pending[pool.submit(_train_job, drun, dseed, cfgs[drun][dseed], threads)] = drun
    return results


def run_demo(out: str, quick: bool = False, config_dir: str | None = None, log=print,
             seed: int | None = None, seeds=None, workers="auto", threads: int | None = None) -> dict:
    """Train the teacher and the students over ``seeds``, print the table, write the report and the figure.

    ``seed`` (one seed) is kept for compatibility with ``--seed``; ``seeds``
    defaults to (0, 1, 2). ``workers`` parallel processes (``"auto"``: one per
    core); ``threads``: torch threads per process (None: cores / workers).
    Returns ``results`` (per run, per seed), ``summary`` (per run: mean, std,
    min, max of the mIoU, mean s/it), ``verdicts``, the report and figure
    paths and the total time.
    """
    import torch

    config_dir = config_dir or demo_config_dir()
    if not os.path.isdir(config_dir):
        raise FileNotFoundError(f"--configs: demo configs not found at {config_dir} (run from the source tree)")
    seeds = parse_seeds(seeds if seeds is not None else ((seed,) if seed is not None else DEFAULT_SEEDS))
    n_jobs = 1 + 3 * len(seeds)
    workers = resolve_workers(workers, n_jobs)
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    os.makedirs(out, exist_ok=True)
    t_start = time.perf_counter()
    cfgs = {run: {s: _load(config_dir, run, out, quick, s) for s in (seeds[:1] if run == "teacher" else seeds)}
            for run in RUNS}
    t, st = cfgs["teacher"][seeds[0]], cfgs["baseline"][seeds[0]]
    log(f"== teacher {t['model']['name']} (width {t['model']['base_width']}, {t['train']['iterations']} it) and "
        f"students {st['model']['name']} (width {st['model']['base_width']}, {st['train']['iterations']} it): "
        f"baseline, kd, sstkd x seeds {list(seeds)}; {n_jobs} runs on {workers} process(es)"
        + (f", {threads} thread(s) each" if threads else ""))
    results = _run_all(cfgs, seeds, workers, threads, log)
    summary = {run: summarize(results[run]) for run in RUNS}
    base_spi = summary["baseline"]["sec_per_iter"]
    for run in ("kd", "sstkd"):
        spi = summary[run]["sec_per_iter"]
        summary[run]["overhead_s"] = spi - base_spi
        summary[run]["overhead_pct"] = 100.0 * (spi - base_spi) / base_spi if base_spi > 0 else float("nan")
    verdicts = {"kd_vs_baseline": compare(results["baseline"], results["kd"], "KD", "the baseline"),
                "sstkd_vs_kd": compare(results["kd"], results["sstkd"], "SSTKD", "KD")}
    train_wall = time.perf_counter() - t_start
    figure_path = os.path.join(out, "figure.png")
    first = {run: cfgs[run][seeds[0]] for run in RUNS}
    make_figure(first, figure_path, {run: results[run][seeds[0]] for run in RUNS})
    total_wall = time.perf_counter() - t_start
    table = format_table(results, summary, seeds)
    log("")
    log(table)
    log("")
    for v in verdicts.values():
        log(v["text"])
    report_path = os.path.join(out, "report.md")
    write_report(report_path, results, summary, verdicts, first, table, seeds, train_wall, total_wall, quick,
                 workers, threads or torch.get_num_threads())
    log(f"\nreport: {report_path}\nfigure: {figure_path}\ntotal time: {total_wall:.0f} s "
        f"({_cpu_total(results):.0f} CPU s in the runs; load average {_load_average()})")
    return {"results": results, "summary": summary, "verdicts": verdicts, "report": report_path,
            "figure": figure_path, "total_s": total_wall, "seeds": seeds, "workers": workers}


# ------------------------------------------------------------------- statistics


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


def summarize(per_seed: dict) -> dict:
    """mIoU mean, sample standard deviation (0 for one seed), min and max over the seeds; mean s/it; params."""
    values = [r["mIoU"] for r in per_seed.values()]
    n = len(values)
    mean, std = _mean_std(values)
    first = next(iter(per_seed.values()))
    return {"mIoU_mean": mean, "mIoU_std": std, "mIoU_min": min(values), "mIoU_max": max(values), "n": n,
            "sec_per_iter": sum(r["sec_per_iter"] for r in per_seed.values()) / n, "params": first["params"]}


def compare(reference: dict, candidate: dict, name: str, ref_name: str) -> dict:
    """Does ``candidate`` beat ``reference`` beyond the seed spread? (per-seed mIoU dicts, same seeds)

    The difference of the means must exceed the larger of the two sample
    standard deviations, and every per-seed (paired) difference must have its
    sign. With one seed there is no spread, so no verdict. Returns
    ``dict(verdict, diff, spread, paired, text)``; ``verdict`` is ``"better"``,
    ``"worse"``, ``"within spread"`` or ``"one seed"``.
    """
    seeds = sorted(set(reference) & set(candidate))
    paired = [100 * (candidate[s]["mIoU"] - reference[s]["mIoU"]) for s in seeds]
    ref_mean, ref_std = _mean_std([reference[s]["mIoU"] for s in seeds])
    cand_mean, cand_std = _mean_std([candidate[s]["mIoU"] for s in seeds])
    diff = 100 * (cand_mean - ref_mean)
    spread = 100 * max(ref_std, cand_std)
    per_seed = ", ".join(f"{d:+.2f}" for d in paired)
    if len(seeds) < 2:
        verdict, text = "one seed", (f"{name} vs {ref_name}: {diff:+.2f} mIoU points on one seed; run several "
                                     "seeds (--seeds) for a verdict.")
    elif diff > spread and all(d > 0 for d in paired):
        verdict = "better"
        text = (f"{name} beats {ref_name} beyond the seed spread on this toy task: {diff:+.2f} mIoU points "
                f"(mean of {len(seeds)} seeds; per seed {per_seed}; larger std {spread:.2f}).")
    elif diff < -spread and all(d < 0 for d in paired):
        verdict = "worse"
        text = (f"{name} is worse than {ref_name} beyond the seed spread on this toy task: {diff:+.2f} mIoU points "
                f"(per seed {per_seed}; larger std {spread:.2f}).")
    else:
        verdict = "within spread"
        text = (f"{name} does not beat {ref_name} beyond the seed spread on this toy task: {diff:+.2f} mIoU points "
                f"(per seed {per_seed}; larger std {spread:.2f}); no conclusion either way.")
    return {"verdict": verdict, "diff": diff, "spread": spread, "paired": paired, "text": text}


# ------------------------------------------------------------------- report


def format_table(results: dict, summary: dict, seeds) -> str:
    seed_cols = " | ".join(f"seed {s}" for s in seeds)
    rows = [f"| model | params | {seed_cols} | mean ± std | s / iteration | distillation overhead / iteration |",
            "|---|---:|" + "---:|" * len(seeds) + "---:|---:|---:|"]
    for run in RUNS:
        r, m = results[run], summary[run]
        cells = " | ".join(f"{100 * r[s]['mIoU']:.2f}" if s in r else "—" for s in seeds)
        over = "—"
        if run in ("kd", "sstkd"):
            over = f"{m['overhead_s']:+.3f} s ({m['overhead_pct']:+.0f}%)"
        elif run == "baseline":
            over = "(reference)"
        spread = f"{100 * m['mIoU_mean']:.2f} ± {100 * m['mIoU_std']:.2f}" if m["n"] > 1 else f"{100 * m['mIoU_mean']:.2f}"
        rows.append(f"| {LABELS[run]} | {m['params'] / 1e6:.2f} M | {cells} | {spread} | {m['sec_per_iter']:.3f} | "
                    f"{over} |")
    return "\n".join(rows)


def write_report(path: str, results: dict, summary: dict, verdicts: dict, cfgs: dict, table: str, seeds,
                 train_wall: float, total_wall: float, quick: bool, workers: int, threads: int) -> None:
    s, t = cfgs["baseline"], cfgs["teacher"]
    d = s["data"]
    opts = {**d["options"]}
    gap = 100 * (summary["teacher"]["mIoU_mean"] - summary["baseline"]["mIoU_mean"])
    lines = [
        "# sstkd demo: teacher -> student distillation on synthetic textures (CPU)",
        "",
        ("Generated by `sstkd demo --quick` (smoke sizes: the numbers mean nothing)." if quick
         else "Generated by `sstkd demo`."),
        "",
        "## Results",
        "",
        f"mIoU (%) on the validation set; students over seeds {', '.join(map(str, seeds))} "
        "(mean ± sample standard deviation), one teacher (first seed).",
        "",
        table,
        "",
        f"* **{verdicts['sstkd_vs_kd']['text']}**",
        f"* {verdicts['kd_vs_baseline']['text']}",
        "* Verdict rule: the difference of the means must exceed the larger standard deviation, and every "
        "per-seed difference (same seed = same initialization and data order) must have the same sign.",
        f"* Teacher - baseline student gap: {gap:+.2f} mIoU points.",
        "* Overhead = seconds per training iteration minus the baseline's (means over the seeds); it includes "
        "the teacher's forward pass, the distillation losses and the critic's update. The runs share the "
        "cores, so these are timings under load.",
        f"* Wall time: {train_wall:.0f} s of training + evaluation, {total_wall:.0f} s in all, "
        f"{len(seeds) * 3 + 1} runs on {workers} process(es) with {threads} torch thread(s) each "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"1-minute load average {_load_average()} at the end). The runs used {_cpu_total(results):.0f} CPU "
        "seconds in all; timings on a shared machine are noisy.",
        "",
        "![figure](figure.png)",
        "",
        "## Setup",
        "",
        f"* Data: `SyntheticTextures` ({opts.get('num_classes', 8)} texture classes, "
        f"{opts.get('num_images', '?')} training images of {opts.get('size', '?')} px, "
        f"{d['val_options'].get('num_images', opts.get('num_images', '?'))} validation images; crops "
        f"{d['crop_size']}, scale {d['scale_range']}, flip, jitter {d['jitter']}).",
        f"* Teacher: `{t['model']['name']}` base width {t['model']['base_width']}, "
        f"{t['train']['iterations']} iterations, batch {t['train']['batch_size']}, lr {t['train']['lr']}, "
        f"seed {t['seed']}.",
        f"* Students (the three identical but for the losses): `{s['model']['name']}` base width "
        f"{s['model']['base_width']}, {s['train']['iterations']} iterations, batch {s['train']['batch_size']}, "
        f"lr {s['train']['lr']}.",
        "* KD: `SSTKDConfig.preset('kd')` with the SKD/IFVD protocol (`protocol: ifvd`: pixel-wise KL averaged "
        "over every element B·K·H·W, weight 10; SAGAN critic on the raw logits, WGAN-GP, weight 0.001). "
        "SSTKD: the same plus the CDM structural loss and the DTIEM statistical loss on the stride-4 "
        "`backbone.layer1` features" + _loss_overrides(cfgs) + ".",
        "* Configs: `configs/demo/`; every run directory (`<run>/seed<N>/`) holds its resolved `config.yaml`, "
        "`metrics.jsonl` and the student-only `final_student.pt`.",
        "",
        "## What this shows and what it does not",
        "",
        "* It shows the whole pipeline working end to end on a CPU: teacher training, the student trainings "
        "over several seeds, evaluation (dataset-level mIoU), checkpoints, and the cost of each distillation "
        "variant per iteration.",
        "* It is a toy problem with tiny networks trained from scratch for a few hundred iterations: the "
        "verdicts above hold for this task and these seeds only, and none of them is evidence for or against "
        "the method at the paper's scale (Cityscapes / VOC / ADE20K, ResNet-101 teachers, 40k iterations: "
        "`configs/<dataset>/`).",
        "* The texture-loss weights are the library defaults (`SSTKDConfig`), not tuned on this toy problem; "
        "only the critic is narrowed (`d_channels`) to suit the tiny student.",
        "* The per-iteration overhead on the CPU is dominated by the teacher's forward pass and the "
        "reference (PyTorch) texture operators; on a GPU the fused kernels change that picture "
        "(`sstkd bench`).",
        "",
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def _cpu_total(results: dict) -> float:
    return sum(r.get("cpu_s", 0.0) for per_seed in results.values() for r in per_seed.values())


def _load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:  # not available on this platform
        return "n/a"


def _loss_overrides(cfgs: dict) -> str:
    from sstkd.distill import SSTKDConfig

    loss = cfgs["sstkd"]["distill"]["loss"].to_dict()
    preset = SSTKDConfig.preset(cfgs["sstkd"]["method"]).to_dict()
    extra = {k: v for k, v in loss.items() if v != preset[k]}
    return f"; overrides: `{extra}`" if extra else ""


# ------------------------------------------------------------------- figure


def _figure_image(cfg: dict):
    """One validation image, at twice the training size (so the stride-4 features can take a 2-level contourlet)."""
    from sstkd.data import SyntheticTextures, build_transforms

    opts = {**cfg["data"]["options"], **cfg["data"]["val_options"]}
    size = opts.get("size", 64)
    size = 2 * size if isinstance(size, int) else [2 * v for v in size]
    ds = SyntheticTextures(num_images=1, size=size, num_classes=opts.get("num_classes", 8),
                           seed=opts.get("seed", 0), split="val", transforms=build_transforms(train=False))
    image, label = ds[0]
    raw, _ = ds.load_pair(0)
    return image, label, raw, ds.class_names


def _band_mosaic(bands):
    """Absolute sub-band coefficients, each resized (nearest) to a common size, tiled 2 x N/2."""
    import numpy as np
    import torch.nn.functional as F

    hh = max(b.shape[-2] for b in bands)
    ww = max(b.shape[-1] for b in bands)
    tiles = []
    for b in bands:
        t = F.interpolate(b.abs()[None, None].float(), size=(hh, ww), mode="nearest")[0, 0]
        t = t / t.max().clamp_min(1e-12)
        tiles.append(np.pad(t.numpy(), 1, constant_values=1.0))
    half = (len(tiles) + 1) // 2
    rows = [np.concatenate(tiles[:half], axis=1)]
    if len(tiles) > half:
        second = tiles[half:] + [np.ones_like(tiles[0])] * (half - len(tiles[half:]))
        rows.append(np.concatenate(second, axis=1))
    return np.concatenate(rows, axis=0)


def make_figure(cfgs: dict, path: str, results: dict | None = None) -> None:
    """Inputs, ground truth, the four models' predictions, and the teacher's contourlet sub-bands
    (one channel of ``backbone.layer1``) and texture histogram, for one image."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from sstkd.distill import FeatureTap
    from sstkd.distill.cdm import ContourletDecompositionModule, pad_to_size
    from sstkd.distill.dtiem import clip_histogram, intensity_map
    from sstkd.engine.checkpoint import load_student
    from sstkd.ops import contourlet_dec, quantize_count

    image, label, raw, class_names = _figure_image(cfgs["baseline"])
    preds = {}
    teacher_low = None
    for run in RUNS:
        model = load_student(os.path.join(cfgs[run]["work_dir"], "final_student.pt")).eval()
        with torch.no_grad():
            if run == "teacher":
                with FeatureTap(model, {"low": cfgs["kd"]["distill"]["taps"]["teacher"]}) as tap:
                    logits = model(image[None])["out"]
                    teacher_low = tap["low"][0]
            else:
                logits = model(image[None])["out"]
        preds[run] = logits.argmax(1)[0].numpy()

    nlevs = list(cfgs["sstkd"]["distill"]["loss"].str_nlevs)
    channel = int(teacher_low.flatten(1).var(dim=1).argmax())
    feat = teacher_low[channel][None, None].double()
    cdm = ContourletDecompositionModule(nlevs)
    feat = pad_to_size(feat, cdm.padded_size(*feat.shape[-2:]), "symmetric")
    low, bands = contourlet_dec(feat, nlevs)
    s = intensity_map(teacher_low[None].float())
    levels = int(cfgs["sstkd"]["distill"]["loss"].sta_levels)
    centers, hist = quantize_count(s, levels, iters=3, quantiles=(0.01, 0.99))
    clipped = clip_histogram(hist, 4.0 / levels)

    k = len(class_names)
    cmap = plt.get_cmap("tab10" if k <= 10 else "tab20", k)

    def show_label(ax, lab, title):
        lab = np.asarray(lab).astype(float)
        lab[lab == 255] = np.nan
        ax.imshow(lab, cmap=cmap, vmin=-0.5, vmax=k - 0.5, interpolation="nearest")
        ax.set_title(title, fontsize=8)

    fig = plt.figure(figsize=(15, 6.2))
    grid = fig.add_gridspec(2, 6, height_ratios=[1, 1], hspace=0.35, wspace=0.25)
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(raw)
    ax.set_title("input", fontsize=8)
    show_label(fig.add_subplot(grid[0, 1]), label.numpy(), "ground truth")
    for i, run in enumerate(RUNS):
        miou = results.get(run, {}).get("mIoU") if results else None
        title = LABELS[run] + (f"\nval mIoU {100 * miou:.1f}" if miou is not None else "")
        show_label(fig.add_subplot(grid[0, 2 + i]), preds[run], title)
    ax = fig.add_subplot(grid[1, 0])
    ax.imshow(teacher_low[channel].numpy(), cmap="gray")
    ax.set_title(f"teacher layer1, channel {channel}", fontsize=8)
    ax = fig.add_subplot(grid[1, 1])
    ax.imshow(low[0, 0].numpy(), cmap="gray")
    ax.set_title("contourlet lowpass", fontsize=8)
    shown = bands[-2:]
    names = ["coarse", "fine"] if len(bands) == 2 else [f"level {len(bands) - len(shown) + i}" for i in range(len(shown))]
    for j, (name, level) in enumerate(zip(names, shown)):
        ax = fig.add_subplot(grid[1, 2 + j])
        ax.imshow(_band_mosaic([b[0, 0] for b in level]), cmap="magma")
        ax.set_title(f"{name} level: {len(level)} directions, |coef|", fontsize=8)
    ax = fig.add_subplot(grid[1, 4:])
    c = centers[0].numpy()
    width = float(np.median(np.diff(c))) if len(c) > 1 else 1.0
    ax.bar(c, hist[0].numpy(), width=width, color="#4c72b0", label="histogram (refined levels)")
    ax.plot(c, clipped[0].numpy(), color="#dd8452", lw=1.2, label="denoised (clipped at 4/L)")
    ax.set_title(f"teacher texture histogram: quantize_count, L={levels}, 3 Lloyd steps", fontsize=8)
    ax.set_xlabel("texture intensity cos(GAP(F), F_i)", fontsize=8)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    for a in fig.axes:
        if a is not ax:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle("sstkd demo (synthetic textures): predictions, and the teacher's structural (contourlet) and "
                 "statistical (histogram) texture for one validation image", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------------- CLI


def resolve_threads(value: str | int | None) -> int | None:
    """``--threads``: an int >= 1, or ``auto``: None (torch's default) unless the 1-minute load
    average shows the cores busy with other work, then 1."""
    if value is None:
        return None
    if str(value) == "auto":
        try:
            busy = os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1)
        except OSError:  # not available on this platform
            busy = False
        return 1 if busy else None
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"--threads: expected a number or 'auto', got {value!r}") from None
    if n < 1:
        raise ValueError(f"--threads: must be >= 1, got {n}")
    return n



def main(args: argparse.Namespace) -> int:
    from sstkd.engine.checkpoint import CheckpointError
    from sstkd.engine.config import ConfigError

    try:
        threads = resolve_threads(args.threads)
        seeds = parse_seeds(str(args.seed) if args.seed is not None else args.seeds)
        resolve_workers(args.workers, 1)
    except ValueError as e:
        print(f"sstkd demo: error: {e}", file=sys.stderr)
        return 2
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        run_demo(args.out, quick=args.quick, config_dir=args.configs, seeds=seeds, workers=args.workers,
                 threads=threads)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"sstkd demo: error: {e}", file=sys.stderr)
        return 2
    return 0
