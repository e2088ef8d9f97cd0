"""A driving agent around a learned policy checkpoint: `takeover drive --agent checkpoint:PATH`.

Each tick the policy sees only the `Observation` (camera image, speed, target points, command),
predicts the path and speed waypoints (and, for the VLA, commentary), and SimLingo's
`WaypointController` turns them into throttle, brake and steer. The creep rule is off unless asked
for (`creep=True`) and is reported in the output's info when on. A VLA can also be driven by an
instruction (`instruction="Slow down."`, mode "instruction_following" or "safety"), as in Action
Dreaming: `takeover drive --agent checkpoint:PATH --agent-arg "instruction=Slow down."`. A VLA with
camera history (`vision.history_s`) also gets the image of that many ticks earlier; the agent keeps the
images since (until there are enough, the oldest it has: at the start of a route the ego stands).
`commentary=false` drives a VLA without generating commentary (its waypoints from the prompt alone; for
one trained with `train.commentary_dropout`); `marginal_speed=true` decides the commentary's speed action
by its probability summed over its phrasings (`VLA.speed_action_by_marginal`).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import torch

from envs.scene import Observation, Route, Scene
from policies.base import AgentOutput
from policies.checkpoint import CheckpointError, load_for_inference
from policies.controller import WaypointController

PREFIX = "checkpoint:"


class CheckpointAgent:
    privileged = False

    def __init__(
        self,
        path: str | Path,
        creep: bool = False,
        threads: int = 0,
        instruction: str | None = None,
        mode: str = "instruction_following",
        commentary: bool = True,
        marginal_speed: bool = False,
    ) -> None:
        self.path = Path(path)
        self.instruction = instruction or None
        self.mode = mode
        if threads:
            torch.set_num_threads(threads)
        self.policy = load_for_inference(self.path)
        self._predict_args: dict[str, bool] = {}
        if hasattr(self.policy, "generate"):  # a VLA (the planner has no commentary)
            if not commentary:
                self._predict_args["commentary"] = False
            if marginal_speed:
                self._predict_args["marginal_speed"] = True
        self.name = f"{PREFIX}{self.path}"
        self.controller = WaypointController(creep=creep)
        self.history_ticks = int(getattr(self.policy, "history_ticks", 0))
        self._images: deque[torch.Tensor] = deque(maxlen=self.history_ticks + 1)

    def reset(self, route: Route) -> None:
        self.controller.reset()
        self._images.clear()

    @torch.inference_mode()  # no autograd bookkeeping at all: ~13 % faster decisions than no_grad
    def act(self, obs: Observation, scene: Scene | None) -> AgentOutput:
        if obs.image is None:
            raise CheckpointError("the learned policy needs the camera image; enable the camera")
        image = torch.from_numpy(np.ascontiguousarray(obs.image.transpose(2, 0, 1)))[None]
        batch = {
            "image": image,
            "speed": torch.tensor([float(obs.speed)], dtype=torch.float32),
            "target_points": torch.from_numpy(np.asarray(obs.target_points, np.float32))[None],
            "command": torch.tensor([int(obs.command)], dtype=torch.long),
        }
        if self.history_ticks:  # called once a tick: the oldest kept image is history_ticks back
            self._images.append(image)
            batch["previous_image"] = self._images[0]
        if self.instruction:
            batch["instruction"], batch["mode"] = [self.instruction], [self.mode]
        out = self.policy.predict(batch, **self._predict_args)
        path = out["path"][0].cpu().numpy().astype(np.float64)
        speed_wps = out["speed_waypoints"][0].cpu().numpy().astype(np.float64)
        control = self.controller.step(path, speed_wps, obs.speed)
        info = {"desired_speed": self.controller.last_desired_speed}
        if self.controller.creep:
            info["creep"] = self.controller.force_move > 0
        language = out.get("language", [""])[0] if out.get("language") else ""
        return AgentOutput(control, language=language, path=path, speed_waypoints=speed_wps, info=info)


def make_checkpoint_agent(spec: str, **kwargs: object) -> CheckpointAgent:
    return CheckpointAgent(spec[len(PREFIX) :], **kwargs)  # type: ignore[arg-type]
