"""Policy benchmarks: tiny-VLA decision latency on one core, training throughput, and the sizes of the
Qwen2-0.5B-class configuration. Prints JSON.

    python benchmarks/policy.py [--checkpoint CKPT] [--data DATASET] [--skip-latency] [--skip-large]

- latency: `predict` (image encoder, greedy commentary with a KV cache, then the 30 waypoint queries)
  with LoRA folded in (`merge_for_inference`, as `takeover drive --agent checkpoint:` does), one thread,
  on camera frames from `--data` (or random images). With a trained `--checkpoint` the commentary has
  its real length; an untrained model is capped at `--max-tokens`. `without_commentary_median_ms`: the
  waypoints alone (`predict(..., commentary=False)`, the driving-only mode of `train.commentary_dropout`).
- training: `training_loss` + backward + AdamW step of the tiny VLA on batches of 32 (threads: torch's
  default, or `--train-threads`); `--train-autocast` runs the loss under bf16 autocast (mixed precision),
  `--train-compile` through `torch.compile` (its compile time reported apart).
- large: the `qwen2-0.5b` preset built from its config (random weights, nothing downloaded): parameter
  counts (vision encoder, LLM, heads), LoRA (r 32, all linear layers) parameters, weight memory in
  float32 / bfloat16 and the process's resident memory after building it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import numpy as np
import torch

from policies.checkpoint import resolve_checkpoint
from policies.vla import VLA
from policies.vla_config import qwen2_05b_config, tiny_config


def _observations(data: str | None, n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    if data:
        from envs.dataset import open_dataset

        frames = []
        for f in open_dataset(data).iter_frames():
            if f.image is not None:
                frames.append(f)
            if len(frames) >= n * 5:
                break
        frames = frames[::5][:n]
        return [
            {
                "image": torch.from_numpy(np.ascontiguousarray(f.image.transpose(2, 0, 1)))[None],
                "speed": torch.tensor([f.speed], dtype=torch.float32),
                "target_points": torch.from_numpy(np.asarray(f.target_points, np.float32))[None],
                "command": torch.tensor([f.command]),
            }
            for f in frames
        ]
    return [
        {
            "image": torch.from_numpy(rng.integers(0, 256, (1, 3, 128, 256), dtype=np.uint8)),
            "speed": torch.tensor([float(rng.uniform(0, 12))]),
            "target_points": torch.from_numpy(rng.normal(size=(1, 2, 2)).astype(np.float32) * 20),
            "command": torch.tensor([4]),
        }
        for _ in range(n)
    ]


def latency(checkpoint: str | None, data: str | None, n: int, max_tokens: int) -> dict:
    torch.set_num_threads(1)
    model = VLA.load(resolve_checkpoint(checkpoint)) if checkpoint else VLA(tiny_config())
    if not checkpoint:
        model.config.max_answer_tokens = max_tokens
    model.merge_for_inference()
    obs = _observations(data, n)
    times, tokens = [], []
    with torch.inference_mode():  # as the driving agent
        for o in obs[:5]:
            model.generate(o)
        for o in obs:
            t = time.perf_counter()
            out = model.generate(o)
            times.append(time.perf_counter() - t)
            tokens.append(len(out["answers"][0]))
        silent = []
        for o in obs:
            t = time.perf_counter()
            model.predict(o, commentary=False)
            silent.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1e3
    return {
        "checkpoint": checkpoint,
        "observations": len(obs),
        "threads": 1,
        "median_ms": round(float(np.median(ms)), 2),
        "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "mean_answer_tokens": round(float(np.mean(tokens)), 1),
        "example_commentary": out["texts"][0],
        "without_commentary_median_ms": round(float(np.median(silent)) * 1e3, 2),
        "target_ms": 30,
    }


def training(steps: int, threads: int, autocast: bool = False, compile_model: bool = False) -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = VLA(tiny_config())
    loss = torch.compile(model.training_loss) if compile_model else model.training_loss
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    b = 32
    batch = {
        "image": torch.randint(0, 256, (b, 3, 128, 256), dtype=torch.uint8),
        "speed": torch.rand(b) * 10,
        "target_points": torch.randn(b, 2, 2) * 10,
        "language": ["Follow the route. Decelerate to stay behind the vehicle."] * b,
        "path": torch.randn(b, 20, 2).cumsum(1),
        "speed_waypoints": torch.randn(b, 10, 2).cumsum(1),
        "has_path": torch.ones(b, dtype=torch.bool),
        "has_speed_waypoints": torch.ones(b, dtype=torch.bool),
    }
    times = []
    for _ in range(steps + 3):
        t = time.perf_counter()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = loss(batch)
        out["loss"].backward()
        opt.step()
        times.append(time.perf_counter() - t)
    run = times[3:]
    return {
        "precision": "bf16 autocast" if autocast else "float32",
        "compiled": compile_model,
        "first_step_s": round(times[0], 1),
        "batch_size": b,
        "threads": torch.get_num_threads(),
        "step_ms": round(float(np.median(run)) * 1e3, 1),
        "samples_per_s": round(b / float(np.median(run)), 1),
        "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
    }


def large() -> dict:
    torch.manual_seed(0)
    model = VLA(qwen2_05b_config())
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    llm_base = sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" not in n)
    lora = sum(p.numel() for p in model.lora_parameters())
    total = count(model)
    heads = count(model.projector) + count(model.target_point_mlp) + count(model.path_head)
    heads += count(model.speed_head) + model.queries.numel()
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "preset": "qwen2-0.5b",
        "total_parameters_M": round(total / 1e6, 1),
        "vision_parameters_M": round(count(model.vision) / 1e6, 1),
        "llm_parameters_M": round(llm_base / 1e6, 1),
        "projector_heads_queries_M": round(heads / 1e6, 2),
        "lora_parameters_M": round(lora / 1e6, 2),
        "lora_share_of_llm_pct": round(100 * lora / llm_base, 2),
        "weights_float32_GB": round(total * 4 / 2**30, 2),
        "weights_bfloat16_GB": round(total * 2 / 2**30, 2),
        "process_peak_rss_GB": round(rss_gb, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="a trained tiny-VLA checkpoint (real commentary lengths)")
    ap.add_argument("--data", help="a dataset whose camera frames feed the latency measurement")
    ap.add_argument("--observations", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=16, help="answer cap for an untrained model")
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--train-threads", type=int, default=0)
    ap.add_argument("--train-autocast", action="store_true", help="training step under bf16 autocast")
    ap.add_argument("--train-compile", action="store_true", help="training loss through torch.compile")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-large", action="store_true")
    args = ap.parse_args()
    result: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__},
    }  # fmt: skip
    if not args.skip_latency:
        result["latency"] = latency(args.checkpoint, args.data, args.observations, args.max_tokens)
    result["training"] = training(
        args.train_steps, args.train_threads, autocast=args.train_autocast, compile_model=args.train_compile
    )
    if not args.skip_large:
        result["large"] = large()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
