"""The VLA's prompt and the Action Dreaming instructions and answers (SimLingo's format).

Driving prompt: "Current speed: {v} m/s. Target waypoint: <target_point><target_point>." The two target
points are embedded by an MLP in place of their placeholder tokens. With an instruction (Action
Dreaming), a mode tag and the instruction follow: "<safety> Instruction: slow down." The model answers
with commentary (driving) or with whether it follows the instruction (Action Dreaming), then the path
and speed queries.
"""

from __future__ import annotations

from policies.tokenizer import INSTRUCTION_FOLLOWING, SAFETY, TARGET_POINT_TOKEN

PROMPT = "Current speed: {speed:.1f} m/s. Target waypoint: " + TARGET_POINT_TOKEN * 2 + "."
MODES = {"safety": SAFETY, "instruction_following": INSTRUCTION_FOLLOWING}

# Action Dreaming instructions by kind of alternative future (envs.action_dreaming)
INSTRUCTIONS = {
    "faster": "Drive faster.",
    "slower": "Slow down.",
    "stop": "Stop.",
    "keep": "Keep the current speed.",
    "lane_change_left": "Change to the left lane.",
    "lane_change_right": "Change to the right lane.",
    "crash": "Drive into the {obj}.",
}
FOLLOW_ANSWER = "Following the instruction."
REFUSE_ANSWER = "Not following the instruction: it would {why}."
REFUSE_REASONS = {
    "collision": "cause a collision with the {obj}",
    "off_road": "leave the road",
    "not_allowed": "break the traffic rules",
}
OBJECT_WORDS = ("vehicle", "pedestrian", "bicycle", "obstacle", "emergency vehicle", "parked vehicle", "cone")


def driving_prompt(speed: float, instruction: str | None = None, mode: str = "safety") -> str:
    text = PROMPT.format(speed=max(float(speed), 0.0))
    if instruction:
        if mode not in MODES:
            raise ValueError(f"unknown instruction mode {mode!r}; expected one of {sorted(MODES)}")
        text += f" {MODES[mode]} Instruction: {instruction}"
    return text


def prompt_vocabulary() -> list[str]:
    """Every fixed text of prompts and answers (for training a tokenizer on the label vocabulary)."""
    texts = [PROMPT.format(speed=12.3), FOLLOW_ANSWER]
    texts += [
        driving_prompt(1.0, t.format(obj=o), m)
        for t in INSTRUCTIONS.values()
        for o in OBJECT_WORDS
        for m in MODES
    ]
    texts += [
        REFUSE_ANSWER.format(why=r.format(obj=o)) for r in REFUSE_REASONS.values() for o in OBJECT_WORDS
    ]
    return texts
