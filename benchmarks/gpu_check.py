"""GPU check: SN-Net training and evaluation speed on one CUDA GPU, random weights, generated JPEGs.

    bash benchmarks/gpu_check.sh              # about 3 minutes on one H100/H200; writes results/benchmarks_gpu.md
    python benchmarks/gpu_check.py --tiny --device cpu --backend aot_eager   # the same code on CPU, in seconds

Everything is measured side by side in one run on one card (bf16 autocast, batch 128, DeiT Ti/S/B
at 224 px, 71 networks, no network access, no pretrained weights):

1. train step (forward, backward, AdamW step, grads to None; no host sync inside the step) of the
   SN-Net set to each anchor vs the plain timm model with the same weights, eager and compiled
   (``--torchcompile``: every block compiled; the timm model's blocks likewise) in each of
   ``--modes`` (torch.compile's default mode, and reduce-overhead: CUDA graphs);
2. training with a network drawn per step (train.py's default sampler), eager vs compiled in each
   mode: img/s, the warm-up time (the first steps, which compile every block and, with
   reduce-overhead, record every network's CUDA-graph path), the peak GPU memory;
3. evaluation of every network: the one-pass sweep (eval.py) vs one pass over the data per network
   (the official evaluation) on generated JPEGs, identical counts asserted;
4. latency per anchor as deployed (``eval.py --measure-latency`` on CUDA: CUDA-graph replay), at
   batch 1 and at ``--latency-batch-size``, next to a plain eager forward.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from snnet import create_snnet
from snnet.core.compile import compile_blocks
from snnet.train.network_sampling import NetworkSampler

REPO = Path(__file__).resolve().parents[1]
ANCHORS = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]
TINY = dict(
    img_size=32,
    model_kwargs=dict(patch_size=8, depth=4),
    anchor_kwargs=[dict(embed_dim=d, num_heads=h) for d, h in ((24, 2), (48, 3), (96, 6))],
)


def model_kwargs(args) -> dict:
    return dict(TINY) if args.tiny else dict(img_size=224)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], None]], steps: int, rounds: int, device: torch.device) -> dict[str, float]:
    """Median over ``rounds`` of the mean time (s) of ``steps`` back-to-back calls of each fn; the
    contenders alternate order every round. The queue is drained only around each timed run."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    items = list(fns.items())
    for r in range(rounds):
        for name, fn in items if r % 2 == 0 else items[::-1]:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


class TrainStep:
    """forward + loss + backward + AdamW step + grads to None, as train.py's step without host reads."""

    def __init__(self, model: nn.Module, device: torch.device, amp: bool, before: Callable[[], None] = lambda: None):
        from timm.optim import create_optimizer_v2

        self.model, self.before = model, before
        self.opt = create_optimizer_v2(model, opt="adamw", lr=1e-5, weight_decay=0.05)
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.before()
        with self.autocast():
            loss = nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def compile_timm_blocks(model: nn.Module, backend: str, mode: str | None) -> None:
    for blk in model.blocks:
        blk.compile(backend=backend, mode=mode, dynamic=False)


def mark_step(mode: str | None) -> Callable[[], None]:  # as train.py's step does
    """reduce-overhead (CUDA graphs) needs each training iteration marked, so that outputs of the
    previous one may be overwritten."""
    if mode == "reduce-overhead":
        return torch.compiler.cudagraph_mark_step_begin
    return lambda: None


def compile_mode(mode: str) -> str | None:
    return None if mode == "default" else mode


def check_anchor_steps(args, device, rows: list[str]) -> None:
    """Part 1: SN-Net set to each anchor vs the plain timm model, eager and compiled."""
    import timm

    kw = model_kwargs(args)
    torch.manual_seed(0)
    net = create_snnet(ANCHORS, num_classes=1000, **kw).to(device)
    x = torch.randn(args.batch_size, 3, net.input_size[-1], net.input_size[-1], device=device)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    for kind in ["eager"] + args.modes:
        mode = compile_mode(kind)
        if kind != "eager":
            compile_blocks(net, args.backend, mode)
        for a, name in enumerate(ANCHORS):
            per = dict(
                num_classes=1000,
                img_size=kw["img_size"],
                **kw.get("model_kwargs", {}),
                **(kw["anchor_kwargs"][a] if "anchor_kwargs" in kw else {}),
            )
            plain = timm.create_model(name, **per).to(device)
            plain.load_state_dict(net.anchors[a].state_dict())
            if kind != "eager":
                compile_timm_blocks(plain, args.backend, mode)
            net.select(a).train()
            plain.train()
            sn_step = TrainStep(net, device, args.amp, mark_step(mode))
            timm_step = TrainStep(plain, device, args.amp, mark_step(mode))
            fns = {"snnet": functools.partial(sn_step, x, y), "timm": functools.partial(timm_step, x, y)}
            for fn in fns.values():  # warm-up (and compilation)
                for _ in range(args.warmup):
                    fn()
            t = interleaved(fns, args.steps, args.rounds, device)
            label = "eager" if kind == "eager" else f"compiled ({args.backend}, {kind})"
            rows.append(
                f"| train step {label}, {name} | SN-Net {t['snnet'] * 1e3:.1f} ms, timm {t['timm'] * 1e3:.1f} ms"
                f" | **{t['snnet'] / t['timm']:.3f}x** |"
            )
            print(rows[-1], flush=True)
    del net
    if device.type == "cuda":
        torch.cuda.empty_cache()


def check_sampled_training(args, device, rows: list[str]) -> None:
    """Part 2: a network drawn per step, eager vs compiled; warm-up time; peak memory."""
    from torch._dynamo.utils import counters

    kw = model_kwargs(args)
    torch.manual_seed(0)
    nets = {kind: create_snnet(ANCHORS, num_classes=1000, **kw) for kind in ["eager"] + args.modes}
    for net in list(nets.values())[1:]:
        net.load_state_dict(nets["eager"].state_dict())
    n = nets["eager"].num_stitches
    x = torch.randn(args.batch_size, 3, kw["img_size"], kw["img_size"], device=device)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps = {}
    for kind, net in nets.items():
        net.to(device).train()
        mode = compile_mode(kind)
        if kind != "eager":
            compile_blocks(net, args.backend, mode)
        sampler = NetworkSampler(n, seed=0)
        step = TrainStep(net, device, args.amp, mark_step(mode))

        def sampled(net=net, sampler=sampler, step=step):
            net.select(sampler.draw())
            step(x, y)

        steps[kind] = sampled
        # warm-up: every anchor and one stitch of each anchor pair: every kind of block and layer runs once
        first_of_pair: dict[tuple, int] = {}
        for s in net.stitches:
            if not s.is_anchor:
                first_of_pair.setdefault((s.front, s.back), s.cfg_id)
        warm_ids = list(range(len(ANCHORS))) + list(first_of_pair.values())
        if mode == "reduce-overhead":  # CUDA graphs: every network's path is recorded once
            warm_ids += list(range(n)) * args.warmup_every_network
        synchronize(device)
        start = time.perf_counter()
        for i in warm_ids:
            net.select(i)
            step(x, y)
        synchronize(device)
        rows.append(
            f"| warm-up (compilation), {kind}: the first {len(warm_ids)} steps | "
            f"{time.perf_counter() - start:.1f} s | |"
        )
        print(rows[-1], flush=True)
    graphs = counters["stats"]["unique_graphs"]
    t = interleaved(steps, args.sampled_steps, args.rounds, device)
    rows.append(
        f"| graphs compiled while the sampled network changed every step (after warm-up) | "
        f"{counters['stats']['unique_graphs'] - graphs} | |"
    )
    for kind in nets:
        rows.append(
            f"| sampled-network train step, {kind} ({n} networks, uniform) | {t[kind] * 1e3:.1f} ms | "
            f"{args.batch_size / t[kind]:,.0f} img/s, **{t['eager'] / t[kind]:.2f}x** eager |"
        )
    if device.type == "cuda":
        rows.append(
            f"| peak GPU memory ({len(nets)} SN-Nets with AdamW states, batch {args.batch_size}) | "
            f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB | |"
        )
    print("\n".join(rows[-len(nets) - 2 :]), flush=True)
    del nets, steps
    if device.type == "cuda":
        torch.cuda.empty_cache()


def check_sweep(args, device, rows: list[str]) -> None:
    """Part 3: one-pass sweep vs one pass per network, generated JPEGs."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_sweep import write_jpegs

    from snnet.data.datasets import create_dataset
    from snnet.data.loaders import Normalize, data_config_for, eval_loader, eval_transform
    from snnet.evaluate.sweep import one_at_a_time, sweep_pass

    kw = model_kwargs(args)
    torch.manual_seed(0)
    net = create_snnet(ANCHORS, num_classes=10, **kw)
    with torch.no_grad():  # distinct stitched networks
        for layer in net.stitch_layers:
            layer.transform.weight.normal_(0, 0.3)
    net.to(device).eval()
    ids = list(range(net.num_stitches))
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        write_jpegs(Path(tmp), args.images, size=224 if not args.tiny else 32)
        ds = create_dataset(None, tmp, "val")
        cfg = data_config_for(net, ds)
        ds.transform = eval_transform(cfg)
        loader = eval_loader(ds, args.eval_batch_size, args.workers, pin_memory=device.type == "cuda")
        prep = Normalize(cfg["mean"], cfg["std"], device)
        autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp else contextlib.nullcontext
        sweep_pass(net, loader, ids[:2], prep, autocast, device)  # workers started, kernels loaded
        synchronize(device)
        start = time.perf_counter()
        ours = sweep_pass(net, loader, ids, prep, autocast, device).records()
        synchronize(device)
        t_sweep = time.perf_counter() - start
        start = time.perf_counter()
        ref = one_at_a_time(net, loader, ids, prep, autocast, device).records()
        synchronize(device)
        t_each = time.perf_counter() - start
    same = all(
        (a["correct1"], a["correct5"], a["count"]) == (b["correct1"], b["correct5"], b["count"])
        for a, b in zip(ours, ref)
    )
    rows.append(
        f"| evaluation of {len(ids)} networks on {args.images} JPEGs ({args.workers} loader workers): "
        f"one-pass sweep vs one pass per network | {t_sweep:.1f} s vs {t_each:.1f} s | "
        f"**{t_each / t_sweep:.1f}x**, identical counts: {'yes' if same else 'NO'} |"
    )
    print(rows[-1], flush=True)


def check_latency(args, device, rows: list[str]) -> None:
    """Part 4: latency per anchor as eval.py --measure-latency measures it."""
    from snnet.evaluate.latency import measure_latency

    kw = model_kwargs(args)
    torch.manual_seed(0)
    net = create_snnet(ANCHORS, num_classes=1000, **kw).to(device).eval()
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp else contextlib.nullcontext
    for batch in sorted({1, args.latency_batch_size}):
        deployed = [
            measure_latency(net, a, batch, device, 10, args.latency_repeats, autocast) for a in range(len(ANCHORS))
        ]
        eager = [
            measure_latency(net, a, batch, device, 10, args.latency_repeats, autocast, cuda_graph=False)
            for a in range(len(ANCHORS))
        ]
        ordered = all(u < v for u, v in zip(deployed, deployed[1:]))
        how = "CUDA-graph replay" if device.type == "cuda" else "wall time"
        rows.append(
            f"| latency at batch {batch}, Ti / S / B: {how} (eval.py) vs eager forward | "
            f"{' / '.join(f'{t:.2f}' for t in deployed)} ms vs {' / '.join(f'{t:.2f}' for t in eager)} ms | "
            f"strictly ordered: {'yes' if ordered else 'NO'} |"
        )
        print(rows[-1], flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny anchors at 32 px (a CPU smoke run)")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (--torchcompile)")
    p.add_argument(
        "--modes",
        nargs="+",
        default=["default", "reduce-overhead"],
        help="torch.compile modes compared with eager (--torchcompile-mode)",
    )
    p.add_argument("--no-amp", dest="amp", action="store_false", help="float32 instead of bf16 autocast")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="back-to-back steps per timed run")
    p.add_argument("--rounds", type=int, default=5, help="alternating timed runs; the median is kept")
    p.add_argument("--sampled-steps", type=int, default=30)
    p.add_argument(
        "--warmup-every-network",
        type=int,
        default=3,
        metavar="N",
        help="reduce-overhead: train every network N times before timing (its CUDA-graph path recorded)",
    )
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--latency-batch-size", type=int, default=64)
    p.add_argument("--latency-repeats", type=int, default=50)
    p.add_argument(
        "--parts",
        nargs="+",
        default=["anchor", "sampled", "sweep", "latency"],
        choices=["anchor", "sampled", "sweep", "latency"],
    )
    p.add_argument("--output", default=str(REPO / "results" / "benchmarks_gpu.md"))
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("error: no CUDA device: this check needs a GPU (or run it with --tiny --device cpu)")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    import timm

    start = time.perf_counter()
    rows = ["| measure | result | ratio |", "| --- | --- | --- |"]
    parts = {
        "anchor": check_anchor_steps,
        "sampled": check_sampled_training,
        "sweep": check_sweep,
        "latency": check_latency,
    }
    for name in args.parts:
        part_start = time.perf_counter()
        try:
            parts[name](args, device, rows)
        except Exception as e:  # one failing part must not cost the others' numbers on a leased GPU
            rows.append(f"| {name}: FAILED | {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''} | |")
            print(rows[-1], flush=True)
            import traceback

            traceback.print_exc()
        print(f"[{name}: {time.perf_counter() - part_start:.0f} s]", flush=True)
    total = time.perf_counter() - start
    header = [
        f"# GPU check on {card}",
        "",
        f"`bash benchmarks/gpu_check.sh {' '.join(sys.argv[1:])}`".replace("  ", " ").replace(" `", "`"),
        f"on {datetime.date.today()}: torch {torch.__version__}, timm {timm.__version__}, "
        f"{'bf16 autocast' if args.amp else 'float32'}, batch {args.batch_size}, "
        f"{'tiny anchors' if args.tiny else 'DeiT Ti/S/B at 224 px'}, random weights; "
        f"--torchcompile backend {args.backend}, modes {', '.join(args.modes)}; {total:.0f} s in all.",
        "",
    ]
    text = "\n".join(header + rows) + "\n"
    print("\n" + text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
