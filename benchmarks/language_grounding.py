"""Do a VLA's waypoints follow its commentary? Prints JSON.

    python benchmarks/language_grounding.py --checkpoint RUN --test DATASET [--frames 300]

On moving frames (> 3 m/s) of `--test`, the start of the answer is given (the rest of the commentary and
the waypoints are generated after it) and what the waypoints then do is compared with what the same words
mean in the expert's data:

- speed: the speed the controller reads from the speed waypoints (`desired_speed_from_waypoints`) minus
  the current speed, m/s. `forced`: the policy's greedy route sentence and each speed action's first
  phrasing; `spread`: "accelerate" minus "decelerate". `greedy`: the policy's own commentary;
  `expert_commentary`: the expert's label teacher-forced. `expert_by_action`: the expert's own change on
  the frames whose label has that action, and `expert_spread` the same difference there.
- route: the path's lateral offset 20 m ahead (m, left positive). `forced`: each of "follow the route"
  and the two lane changes as the route sentence; `spread`: left minus right lane change (a lane is
  ~3.5 m wide). `expert_by_action`: the expert's path on frames whose label says that.
- `hard_deceleration`: the speed numbers on the frames where the expert slows by more than 2 m/s.

A spread far below the expert's says the waypoint heads read the image and hardly the commentary. Then
the commentary explains little of what the policy does, and GRPO over sampled commentaries (TakeVLA) has
little to work with: G commentaries lead to nearly the same waypoints and rewards
(`train.commentary_dream_share` trains the link).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import numpy as np
import torch

from envs.dataset import DatasetError
from learner.data import DataError, FrameBank
from policies.checkpoint import CheckpointError, load_for_inference, resolve_checkpoint
from policies.controller import desired_speed_from_waypoints
from policies.language import ROUTE_PHRASES, SPEED_PHRASES, RouteAction, SpeedAction, spoken_speed_action

MIN_SPEED = 3.0  # m/s
HARD_DECELERATION = 2.0  # m/s below the current speed
SPEED_ACTIONS = (SpeedAction.ACCELERATE, SpeedAction.KEEP, SpeedAction.KEEP_REDUCED, SpeedAction.DECELERATE,
                 SpeedAction.STOP)  # fmt: skip
ROUTE_ACTIONS = (RouteAction.FOLLOW, RouteAction.CHANGE_LANE_LEFT, RouteAction.CHANGE_LANE_RIGHT)


def speed_change(speed_waypoints: torch.Tensor | np.ndarray, speed: float) -> float:
    return desired_speed_from_waypoints(np.asarray(speed_waypoints, np.float64).reshape(-1, 2)) - speed


def lateral(path: torch.Tensor | np.ndarray) -> float:
    return float(np.asarray(path, np.float64).reshape(-1, 2)[-1, 1])


def spoken_route_action(text: str) -> RouteAction | None:
    route = text.partition(". ")[0]
    return next((a for a, ps in ROUTE_PHRASES.items() if route in ps), None)


@torch.inference_mode()
def frame_effects(policy: torch.nn.Module, obs: dict, expert_text: str, speed: float) -> dict | None:
    """One frame's speed changes and lateral offsets under each given answer start (None: the greedy
    commentary has no route sentence)."""
    greedy = policy.generate(obs)
    route, sep, _ = greedy["texts"][0].partition(". ")
    if not sep:
        return None
    taught = policy.forward_teacher(obs, policy.encode_answers([expert_text]))
    out = {
        "greedy": speed_change(greedy["speed_waypoints"][0], speed),
        "expert_commentary": speed_change(taught["speed_waypoints"][0], speed),
    }

    def given(text: str) -> dict:
        return policy.generate(obs, forced=[policy.tokenizer(text, add_special_tokens=False)["input_ids"]])

    for action in SPEED_ACTIONS:
        wps = given(f"{route}. {SPEED_PHRASES[action][0]}")["speed_waypoints"][0]
        out[f"speed:{action}"] = speed_change(wps, speed)
    for action in ROUTE_ACTIONS:
        out[f"route:{action}"] = lateral(given(f"{ROUTE_PHRASES[action][0]}.")["path"][0])
    return out


def _stats(values: Sequence[float]) -> dict:
    a = np.asarray(values, np.float64)
    if not len(a):
        return {"frames": 0}
    return {"frames": len(a), "mean": round(float(a.mean()), 3), "p10": round(float(np.percentile(a, 10)), 3),
            "p90": round(float(np.percentile(a, 90)), 3)}  # fmt: skip


def _grounding(
    rows: list[dict], kind: str, actions: Sequence, expert: list[float], said: list, up: str, down: str
) -> dict:
    """forced / spread / expert_by_action / expert_spread for one kind ("speed" or "route")."""
    forced = {str(a): _stats([r[f"{kind}:{a}"] for r in rows]) for a in actions}
    by_action = {str(a): _stats([e for e, s in zip(expert, said, strict=True) if s == a]) for a in actions}
    has = by_action[str(up)]["frames"] and by_action[str(down)]["frames"]
    return {
        "forced": forced,
        "spread": round(forced[str(up)]["mean"] - forced[str(down)]["mean"], 3) if rows else None,
        "expert_by_action": by_action,
        "expert_spread": round(by_action[str(up)]["mean"] - by_action[str(down)]["mean"], 3) if has else None,
    }


def summarise(rows: list[dict], frames: list) -> dict:
    speed = [speed_change(f.speed_waypoints, float(f.speed)) for f in frames]
    return {
        "frames": len(rows),
        "greedy": _stats([r["greedy"] for r in rows]),
        "expert_commentary": _stats([r["expert_commentary"] for r in rows]),
        "expert": _stats(speed),
        "speed": _grounding(rows, "speed", SPEED_ACTIONS, speed,
                            [spoken_speed_action(f.language) for f in frames], SpeedAction.ACCELERATE,
                            SpeedAction.DECELERATE),
        "route": _grounding(rows, "route", ROUTE_ACTIONS, [lateral(f.path) for f in frames],
                            [spoken_route_action(f.language) for f in frames], RouteAction.CHANGE_LANE_LEFT,
                            RouteAction.CHANGE_LANE_RIGHT),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a VLA checkpoint folder or training run")
    ap.add_argument("--test", required=True, help="dataset whose frames are scored (expert labels)")
    ap.add_argument("--frames", type=int, default=300, help="moving frames drawn at random")
    ap.add_argument("--stride", type=int, default=1, help="keep every k-th frame of each drive")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    path = resolve_checkpoint(args.checkpoint)
    policy = load_for_inference(path, expect="vla")
    bank = FrameBank.load([args.test], progress=False, stride=args.stride)
    moving = [i for i, f in enumerate(bank.frames)
              if f.speed > MIN_SPEED and f.speed_waypoints is not None and f.path is not None]  # fmt: skip
    rng = np.random.default_rng(args.seed)
    chosen = rng.choice(moving, min(args.frames, len(moving)), replace=False) if moving else []
    rows, frames = [], []
    for i in chosen:
        f = bank.frames[i]
        row = frame_effects(policy, bank.observation(i), f.language, float(f.speed))
        if row is not None:
            rows.append(row)
            frames.append(f)
    hard = [k for k, f in enumerate(frames)
            if speed_change(f.speed_waypoints, float(f.speed)) < -HARD_DECELERATION]  # fmt: skip
    hard_summary = summarise([rows[k] for k in hard], [frames[k] for k in hard]) if hard else None
    result = {
        "checkpoint": str(path),
        "test": args.test,
        "all_moving": summarise(rows, frames),
        "hard_deceleration": None if hard_summary is None else {k: hard_summary[k] for k in
                                                                 ("frames", "greedy", "expert_commentary",
                                                                  "expert", "speed")},
        "seconds": round(time.time() - t0, 1),
    }  # fmt: skip
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, DatasetError, DataError) as exc:  # a missing or damaged input: one line
        raise SystemExit(f"language_grounding: {exc}") from None
