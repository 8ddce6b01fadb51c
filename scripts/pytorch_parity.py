#!/usr/bin/env python3
"""Train the run's model again in PyTorch, from the same start on the same batches, and compare.

A wgslm run with `save_batches = true` records its initial model (RUN/init, a Hugging Face directory),
every token batch its optimizer stepped on (RUN/batches.bin) and its evaluation windows
(RUN/eval_batches.bin); RUN/config.toml holds the schedule. This script trains transformers'
GPT2LMHeadModel or LlamaForCausalLM (whichever RUN/init is) with torch.optim.AdamW over the same steps:
the same warmup + cosine learning rate (computed in float32 as wgslm does), global-norm clipping,
weight decay on the tensors with two or more dimensions only, the loss averaged over the micro-batches
of a step. It writes RUN/pytorch-<dtype>/metrics.jsonl in metrics.jsonl's format and prints the
comparison with RUN/metrics.jsonl.

Run by hand (it needs torch and transformers; CI does not run it):

    wgslm train --config configs/shakespeare-char-small.toml --set save_batches=true --out runs/parity
    python3 scripts/pytorch_parity.py runs/parity                 # float32, as wgslm
    python3 scripts/pytorch_parity.py runs/parity --dtype float64 # the exact-arithmetic reference
"""

import argparse
import json
import math
import sys
import tomllib
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def lr_at(step, cfg):
    """wgslm's schedule (src/train/schedule.rs), with its float32 and float64 roundings."""
    f32 = np.float32
    lr, min_lr = f32(cfg["lr"]), f32(cfg["min_lr"])
    warmup, max_steps = cfg["warmup_steps"], cfg["max_steps"]
    if step < warmup:
        return float(lr * f32(step + 1) / f32(warmup + 1))
    if step >= max_steps or max_steps <= warmup:
        return float(min_lr)
    ratio = (step - warmup) / (max_steps - warmup)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return float(f32(float(min_lr) + coeff * float(lr - min_lr)))


def load_batches(run, shapes, name, lead):
    b, t = shapes["batch_size"], shapes["block_size"]
    flat = np.fromfile(run / name, dtype="<u4").astype(np.int64)
    per = int(np.prod(lead[1:])) * 2 * b * t
    if flat.size % per:
        sys.exit(f"{run / name}: {flat.size} ids is not a whole number of batches of {per}")
    return torch.from_numpy(flat.reshape(-1, *lead[1:], 2, b, t))


def mean_loss(model, x, y):
    logits = model(input_ids=x).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def train(run, dtype, steps_limit):
    cfg = tomllib.loads((run / "config.toml").read_text())
    shapes = json.loads((run / "batches.json").read_text())
    accum = shapes["grad_accum_steps"]
    batches = load_batches(run, shapes, "batches.bin", (None, accum))
    evals = load_batches(run, shapes, "eval_batches.bin", (None,))
    steps = min(len(batches), cfg["max_steps"], steps_limit or 1 << 62)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(run / "init", torch_dtype=dtype)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg["weight_decay"]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(
        groups, lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"], foreach=False
    )
    out_dir = run / f"pytorch-{str(dtype).split('.')[-1]}"
    out_dir.mkdir(exist_ok=True)
    lines = []

    def evaluate(step):
        model.eval()
        with torch.no_grad():
            loss = sum(float(mean_loss(model, e[0], e[1])) for e in evals) / len(evals)
        model.train()
        lines.append({"step": step, "val_loss": loss})
        return loss

    for step in range(steps):
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=False)
        loss = 0.0
        for micro in range(accum):
            x, y = batches[step, micro, 0], batches[step, micro, 1]
            part = mean_loss(model, x, y) / accum
            part.backward()
            loss += float(part.detach())
        clip = cfg["grad_clip"]
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        opt.step()
        lines.append({"step": step + 1, "loss": loss, "lr": lr, "grad_norm": float(norm)})
        every = cfg["eval_every"]
        if step + 1 == steps or (every > 0 and (step + 1) % every == 0):
            print(f"step {step + 1}: loss {loss:.4f} val loss {evaluate(step + 1):.4f}", file=sys.stderr)
    with open(out_dir / "metrics.jsonl", "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    return out_dir / "metrics.jsonl"


def read_metrics(path):
    train, val = {}, {}
    for line in path.read_text().splitlines():
        d = json.loads(line)
        if isinstance(d.get("loss"), (int, float)):
            train[d["step"]] = d["loss"]
        if "val_loss" in d:
            val[d["step"]] = d["val_loss"]
    return train, val


def compare(ours_path, theirs_path):
    (ours, ours_val), (theirs, theirs_val) = read_metrics(ours_path), read_metrics(theirs_path)
    steps = sorted(set(ours) & set(theirs))
    if not steps:
        sys.exit("no common steps to compare")
    diff = [abs(ours[s] - theirs[s]) for s in steps]
    rel = [abs(ours[s] - theirs[s]) / abs(theirs[s]) for s in steps]
    marks = [s for s in steps if s % 100 == 0] or steps[-1:]
    print(f"train loss over {len(steps)} steps: max |diff| {max(diff):.3e}, mean |diff| {np.mean(diff):.3e}, "
          f"max relative {max(rel):.3e}; at the end (step {steps[-1]}): wgslm {ours[steps[-1]]:.6f}, "
          f"pytorch {theirs[steps[-1]]:.6f}")
    print("every 100th step (wgslm, pytorch, relative difference):")
    for s in marks:
        print(f"  {s:6d}  {ours[s]:.6f}  {theirs[s]:.6f}  {abs(ours[s] - theirs[s]) / abs(theirs[s]):.2e}")
    for s in sorted(set(ours_val) & set(theirs_val)):
        a, b = ours_val[s], theirs_val[s]
        print(f"val loss at step {s}: wgslm {a:.6f}, pytorch {b:.6f}, relative difference {abs(a - b) / b:.2e}")
    return diff


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a wgslm run directory trained with save_batches = true")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: all)")
    ap.add_argument("--against", type=Path, help="compare with this metrics.jsonl instead of the run's")
    args = ap.parse_args()
    if not (args.run / "init").is_dir():
        sys.exit(f"{args.run}: no init/ directory: train with `--set save_batches=true` first")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    theirs = train(args.run, getattr(torch, args.dtype), args.steps)
    compare(args.against or args.run / "metrics.jsonl", theirs)


if __name__ == "__main__":
    main()
