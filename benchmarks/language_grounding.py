"""Do a VLA's waypoints follow its commentary? Prints JSON.

    python benchmarks/language_grounding.py --checkpoint RUN --test DATASET [--frames 300]

On moving frames (> 3 m/s) of `--test`, the speed the controller reads from the speed waypoints
(`desired_speed_from_waypoints`) minus the current speed, in m/s:

- `forced`: for each speed action a moving ego can take, the policy's greedy route sentence followed by
  the action's first phrasing is given as the start of the answer, the rest of the commentary and the
  waypoints are generated after it. `spread` is "accelerate" minus "decelerate": how far the commentary
  alone moves the speed.
- `greedy`: the policy's own commentary; `expert_commentary`: the expert's label teacher-forced.
- `expert_by_action`: the expert's own speed change on the frames whose label has that action: what each
  action means in the data, the scale `forced` is read against.
- `hard_deceleration`: the same on the frames where the expert slows by more than 2 m/s.

A spread far below the expert's says the waypoint heads read the image and hardly the commentary. Then
the commentary explains little of what the policy does, and GRPO over sampled commentaries (TakeVLA) has
little to work with: G commentaries lead to nearly the same waypoints and rewards.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from envs.dataset import DatasetError
from learner.data import DataError, FrameBank
from policies.checkpoint import CheckpointError, load_policy, resolve_checkpoint
from policies.controller import desired_speed_from_waypoints
from policies.language import SPEED_PHRASES, SpeedAction, spoken_speed_action

MIN_SPEED = 3.0  # m/s
HARD_DECELERATION = 2.0  # m/s below the current speed
MOVING_ACTIONS = (SpeedAction.ACCELERATE, SpeedAction.KEEP, SpeedAction.KEEP_REDUCED, SpeedAction.DECELERATE,
                  SpeedAction.STOP)  # fmt: skip


def speed_change(speed_waypoints: torch.Tensor | np.ndarray, speed: float) -> float:
    return desired_speed_from_waypoints(np.asarray(speed_waypoints, np.float64).reshape(-1, 2)) - speed


@torch.inference_mode()
def frame_changes(policy: torch.nn.Module, obs: dict, expert_text: str, speed: float) -> dict | None:
    """Speed changes of one frame: greedy, expert commentary, each forced action (None: no route sentence)."""
    greedy = policy.generate(obs)
    route, sep, _ = greedy["texts"][0].partition(". ")
    if not sep:
        return None
    out = {"greedy": speed_change(greedy["speed_waypoints"][0], speed)}
    taught = policy.forward_teacher(obs, policy.encode_answers([expert_text]))
    out["expert_commentary"] = speed_change(taught["speed_waypoints"][0], speed)
    for action in MOVING_ACTIONS:
        ids = policy.tokenizer(f"{route}. {SPEED_PHRASES[action][0]}", add_special_tokens=False)["input_ids"]
        forced = policy.generate(obs, forced=[ids])
        out[str(action)] = speed_change(forced["speed_waypoints"][0], speed)
    return out


def summarise(rows: list[dict], expert: list[float], actions: list[SpeedAction | None]) -> dict:
    def stats(v: list[float]) -> dict:
        a = np.asarray(v)
        return {"mean": round(float(a.mean()), 3), "p10": round(float(np.percentile(a, 10)), 3),
                "p90": round(float(np.percentile(a, 90)), 3)} if len(a) else {}  # fmt: skip

    forced = {str(a): stats([r[str(a)] for r in rows]) for a in MOVING_ACTIONS}
    by_action = {str(a): {"frames": sum(x == a for x in actions),
                          **stats([e for e, x in zip(expert, actions, strict=True) if x == a])}
                 for a in MOVING_ACTIONS}  # fmt: skip
    up, down = str(SpeedAction.ACCELERATE), str(SpeedAction.DECELERATE)
    spread = forced[up]["mean"] - forced[down]["mean"]
    expert_spread = None
    if by_action[up]["frames"] and by_action[down]["frames"]:
        expert_spread = by_action[up]["mean"] - by_action[down]["mean"]
    return {
        "frames": len(rows),
        "greedy": stats([r["greedy"] for r in rows]),
        "expert_commentary": stats([r["expert_commentary"] for r in rows]),
        "expert": stats(expert),
        "forced": forced,
        "spread": round(spread, 3),
        "expert_by_action": by_action,
        "expert_spread": None if expert_spread is None else round(expert_spread, 3),
    }


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
    policy = load_policy(path)
    if not hasattr(policy, "generate"):
        raise SystemExit(f"{path} is not a VLA checkpoint (no commentary to test)")
    policy.merge_for_inference()
    policy.eval()
    bank = FrameBank.load([args.test], progress=False, stride=args.stride)
    moving = [i for i, f in enumerate(bank.frames) if f.speed > MIN_SPEED and f.speed_waypoints is not None]
    rng = np.random.default_rng(args.seed)
    chosen = rng.choice(moving, min(args.frames, len(moving)), replace=False) if moving else []
    rows, expert, actions, hard = [], [], [], []
    for i in chosen:
        f = bank.frames[i]
        obs = {
            "image": torch.from_numpy(np.asarray(bank.images[np.array([i])])),
            "speed": torch.tensor([float(f.speed)], dtype=torch.float32),
            "target_points": torch.from_numpy(np.asarray(f.target_points, np.float32))[None],
        }
        row = frame_changes(policy, obs, f.language, float(f.speed))
        if row is None:
            continue
        rows.append(row)
        expert.append(speed_change(f.speed_waypoints, float(f.speed)))
        actions.append(spoken_speed_action(f.language))
        hard.append(expert[-1] < -HARD_DECELERATION)
    keep = [k for k, h in enumerate(hard) if h]
    hard_rows = ([rows[k] for k in keep], [expert[k] for k in keep], [actions[k] for k in keep])
    result = {
        "checkpoint": str(path),
        "test": args.test,
        "all_moving": summarise(rows, expert, actions),
        "hard_deceleration": summarise(*hard_rows) if keep else None,
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, DatasetError, DataError) as exc:  # a missing or damaged input: one line
        raise SystemExit(f"language_grounding: {exc}") from None
