"""Tokenizers for the VLA that need no download.

With pretrained LLM weights the model's own tokenizer is loaded from its folder (`load_tokenizer`) and
the VLA's special tokens are added to it. Without them, `train_label_tokenizer` trains a word-level
tokenizer on the label vocabulary: every phrasing the label generator (`policies.language`) can produce,
the prompt and instruction templates, digits, and any extra texts (the dataset's own labels). Words
split on whitespace and punctuation, digits one by one, so speeds such as "5.3" are spelled by digits;
the Metaspace decoder puts the text back together exactly. It is saved with the checkpoint
(`tokenizer.json`), so a checkpoint always decodes with the vocabulary it was trained with.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from envs.scene import AgentKind, RoadOption
from policies.base import Cause, ExpertState
from policies.language import ENHANCEMENTS, commentary, enhanced

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
IMAGE_TOKEN = "<image>"  # placeholder for one image feature (replaced by the projector's output)
TARGET_POINT_TOKEN = "<target_point>"  # placeholder for one embedded target point
PATH_QUERY = "<path_query>"
SPEED_QUERY = "<speed_query>"
SAFETY = "<safety>"  # Action Dreaming: follow the instruction only if it is safe
INSTRUCTION_FOLLOWING = "<instruction_following>"  # Action Dreaming: follow the instruction
SPECIAL_TOKENS = (
    PAD, BOS, EOS, UNK, IMAGE_TOKEN, TARGET_POINT_TOKEN, PATH_QUERY, SPEED_QUERY, SAFETY,
    INSTRUCTION_FOLLOWING,
)  # fmt: skip
TOKENIZER_FILE = "tokenizer.json"


class TokenizerError(ValueError):
    pass


def _expert_states(rng: np.random.Generator, n: int) -> Iterator[ExpertState]:
    """Expert states spread over every branch of the label grammar (commands, speeds, causes, lane
    changes, hazards), so that the generated labels cover every phrasing table."""
    kinds = [k.name.lower() for k in AgentKind] + ["red_light", "yellow_light", "stop_sign", "route_end"]
    commands = [int(c) for c in RoadOption if c != RoadOption.VOID]
    for _ in range(n):
        speed = float(rng.choice([0.0, 0.05, 3.0, 8.0]))
        target = float(rng.choice([0.0, 0.2, speed, speed + 2.0, max(speed - 2.0, 0.0), 4.0]))
        kind = str(rng.choice(kinds))
        cause = None if rng.random() < 0.3 else Cause(kind, None, float(rng.uniform(2, 40)))
        lane_change = rng.choice([None, "left", "right"], p=[0.6, 0.2, 0.2])
        lc_cause = Cause(str(rng.choice(kinds)), None, 10.0) if lane_change and rng.random() < 0.8 else None
        hazards = {str(rng.choice(["vehicle", "pedestrian", "red_light", "stop_sign", "collision"])): True}
        yield ExpertState(
            target_speed=target,
            desired_speed=float(rng.choice([target, target + 3.0, 8.0])),
            speed=speed,
            command=int(rng.choice(commands)),
            hazards=hazards,
            cause=cause,
            lane_change=lane_change,
            lane_change_cause=lc_cause,
            stuck=bool(rng.random() < 0.1),
        )


def label_corpus(n_states: int = 4000, seed: int = 0) -> list[str]:
    """Texts covering the label generator's vocabulary: commentary and every trigger's enhanced label
    for many expert states and phrasings."""
    from policies.prompts import prompt_vocabulary

    rng = np.random.default_rng(seed)
    texts: list[str] = list(prompt_vocabulary())
    triggers = list(ENHANCEMENTS)
    for i, state in enumerate(_expert_states(rng, n_states)):
        texts.append(commentary(state, i))
        texts.append(enhanced(state, triggers[i % len(triggers)], i))
    return texts


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )


def train_label_tokenizer(extra_texts: Iterable[str] = (), n_states: int = 4000) -> PreTrainedTokenizerFast:
    """Train a word-level tokenizer on the label vocabulary plus `extra_texts`."""
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
    digits = [" ".join("0123456789.-")]
    tok.train_from_iterator(itertools.chain(label_corpus(n_states), digits, extra_texts), trainer)
    return _wrap(tok)


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )
    fast.add_special_tokens({"additional_special_tokens": [t for t in SPECIAL_TOKENS[4:]]})
    return fast


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerBase:
    """A checkpoint's or a pretrained model's tokenizer from its folder, with the VLA's special tokens.

    A folder with this project's `tokenizer.json` and no `tokenizer_config.json` is read as a trained
    label tokenizer; otherwise transformers loads the folder's own tokenizer (local files only)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TokenizerError(f"tokenizer folder {folder} does not exist")
    if (folder / TOKENIZER_FILE).is_file() and not (folder / "tokenizer_config.json").is_file():
        return _wrap(Tokenizer.from_file(str(folder / TOKENIZER_FILE)))
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise TokenizerError(f"no tokenizer in {folder}: {e}") from e
    missing = [t for t in SPECIAL_TOKENS[4:] if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token is None:
        raise TokenizerError(f"the tokenizer in {folder} has no end-of-sequence token")
    return tok


def save_tokenizer(tok: PreTrainedTokenizerBase, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if (
        isinstance(tok, PreTrainedTokenizerFast)
        and tok.backend_tokenizer.model.__class__.__name__ == "WordLevel"
    ):
        tok.backend_tokenizer.save(str(folder / TOKENIZER_FILE))
    else:
        tok.save_pretrained(str(folder))
