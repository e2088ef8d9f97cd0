"""The SimLingo-style VLA: decoding, LoRA, checkpoints, sampling log-probabilities, masked losses."""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch

from envs.scene import Observation, RoadOption
from policies.base import ExpertState, make_agent
from policies.checkpoint import CheckpointError, load_for_inference, load_policy, write_config
from policies.controller import desired_speed_from_waypoints
from policies.language import ENHANCEMENTS, commentary, enhanced
from policies.prompts import FOLLOW_ANSWER, driving_prompt
from policies.tokenizer import EOS, load_tokenizer, save_tokenizer, train_label_tokenizer
from policies.vla import VLA, _repeat_batch, desired_speed_of, smooth_l1_per_sample
from policies.vla_config import (
    ConfigError,
    LLMConfig,
    LoraSettings,
    VisionConfig,
    VLAConfig,
    qwen2_05b_config,
)


def small_config(train_base: bool = True) -> VLAConfig:
    return VLAConfig(
        vision=VisionConfig(image_size=(32, 64), token_grid=(2, 4), embedding_size=8, hidden_sizes=(8, 16)),
        llm=LLMConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2),
        lora=LoraSettings(r=4, alpha=8, train_base=train_base),
        head_hidden=32,
        max_answer_tokens=12,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return train_label_tokenizer(n_states=600)


def make_batch(n: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (n, 3, 32, 64), dtype=torch.uint8, generator=g),
        "speed": torch.rand(n, generator=g) * 10,
        "target_points": torch.randn(n, 2, 2, generator=g) * 10,
        "command": torch.full((n,), int(RoadOption.LANEFOLLOW)),
        "language": ["Follow the route. Maintain speed.", "Follow the route. Stop now.", ""][:n],
        "instruction": ["", "", "Slow down."][:n],
        "mode": ["", "", "safety"][:n],
        "path": torch.randn(n, 20, 2, generator=g),
        "speed_waypoints": torch.randn(n, 10, 2, generator=g),
        "has_path": torch.tensor([True, True, False][:n]),
        "has_speed_waypoints": torch.tensor([True, True, False][:n]),
        "action_weight": torch.ones(n),
    }


def test_label_tokenizer_covers_the_label_vocabulary_and_round_trips(tokenizer, tmp_path):
    rng = np.random.default_rng(5)
    texts = [driving_prompt(7.25), driving_prompt(0.0, "Slow down.", "instruction_following"), FOLLOW_ANSWER]
    for i in range(200):
        state = ExpertState(
            target_speed=float(rng.uniform(0, 10)), desired_speed=8.0, speed=float(rng.uniform(0, 10)),
            command=int(rng.choice([1, 2, 3, 4, 5, 6])), hazards={"vehicle": True},
        )  # fmt: skip
        texts += [commentary(state, i), enhanced(state, list(ENHANCEMENTS)[i % len(ENHANCEMENTS)], i)]
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids, t
        assert tokenizer.decode(ids) == t
    save_tokenizer(tokenizer, tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again(texts[5])["input_ids"] == tokenizer(texts[5])["input_ids"]
    assert len(tokenizer) < 400  # a word-level vocabulary of the labels, not a general-purpose one


def test_waypoints_are_cumulative_sums_of_decoded_deltas(tokenizer):
    torch.manual_seed(0)
    model = VLA(small_config(), tokenizer)
    hidden = torch.randn(2, 30, 32)
    path, speed = model._decode_waypoints(hidden)
    assert path.shape == (2, 20, 2) and speed.shape == (2, 10, 2)
    torch.testing.assert_close(path, model.path_head(hidden[:, :20]).cumsum(1))
    torch.testing.assert_close(speed, model.speed_head(hidden[:, 20:]).cumsum(1))
    out = model.eval().predict(make_batch())
    assert out["path"].shape == (3, 20, 2) and out["speed_waypoints"].shape == (3, 10, 2)
    assert len(out["language"]) == 3


def test_lora_leaves_base_weights_frozen(tokenizer):
    torch.manual_seed(0)
    model = VLA(small_config(train_base=False), tokenizer)
    base = {n: p.detach().clone() for n, p in model.llm.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in model.llm.named_parameters() if "lora_" in n}
    assert all(not p.requires_grad for n, p in model.llm.named_parameters() if "lora_" not in n)
    assert all(p.requires_grad for p in model.lora_parameters())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model.training_loss(make_batch())["loss"].backward()
        opt.step()
    for n, p in model.llm.named_parameters():
        if "lora_" in n:
            continue
        assert torch.equal(p, base[n]), n
    changed = [n for n, p in model.llm.named_parameters() if "lora_" in n and not torch.equal(p, lora[n])]
    assert len(changed) == len(lora)
    # the vision encoder, projector, target-point MLP, queries and heads train in pre-training
    assert model.queries.requires_grad and all(p.requires_grad for p in model.vision.parameters())


def test_save_load_round_trip_gives_identical_outputs(tokenizer, tmp_path):
    torch.manual_seed(1)
    model = VLA(small_config(), tokenizer)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # move LoRA's B away from zero so the adapters matter
        opt.zero_grad()
        model.training_loss(make_batch())["loss"].backward()
        opt.step()
    model.eval()
    model.save(tmp_path / "ckpt", meta={"epoch": 1})
    assert (tmp_path / "ckpt" / "adapters" / "adapter_config.json").is_file()
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    doc = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert doc["architecture"] == "vla" and doc["meta"]["epoch"] == 1
    again = load_policy(tmp_path / "ckpt").eval()
    batch = make_batch()
    a, b = model.generate(batch), again.generate(batch)
    assert a["answers"] == b["answers"]
    assert torch.equal(a["path"], b["path"]) and torch.equal(a["speed_waypoints"], b["speed_waypoints"])
    answers = model.encode_answers(batch["language"])
    assert torch.equal(model.answer_log_probs(batch, answers), again.answer_log_probs(batch, answers))
    # folded for driving: same predictions, and such a model refuses to be saved
    merged = VLA.load(tmp_path / "ckpt").merge_for_inference()
    ready = load_for_inference(tmp_path / "ckpt")  # what the driving agent and the probes use
    assert ready.merged and not ready.training
    c = merged.generate(batch)
    assert c["answers"] == a["answers"]
    torch.testing.assert_close(c["path"], a["path"], atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="merged"):
        merged.save(tmp_path / "other")


def test_wrong_architecture_and_bad_checkpoints_are_clear_errors(tokenizer, tmp_path):
    write_config(tmp_path / "planner", "planner", {"n_modes": 4})
    with pytest.raises(CheckpointError, match=r"'planner' checkpoint, not a 'vla'"):
        VLA.load(tmp_path / "planner")
    with pytest.raises(CheckpointError, match=r"'planner' checkpoint, not a 'vla'"):
        load_for_inference(tmp_path / "planner", expect="vla")  # the probes' check
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_policy(tmp_path / "junk")
    write_config(tmp_path / "alien", "diffusion", {})
    with pytest.raises(CheckpointError, match="unknown architecture 'diffusion'"):
        load_policy(tmp_path / "alien")
    with pytest.raises(ConfigError, match="unknown VLA config keys: layers"):
        VLAConfig.from_dict({"layers": 3})
    # a VLA checkpoint whose weights belong to another size
    VLA(small_config(), tokenizer).save(tmp_path / "vla")
    doc = json.loads((tmp_path / "vla" / "config.json").read_text())
    doc["config"]["llm"]["hidden_size"] = 48
    (tmp_path / "vla" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        VLA.load(tmp_path / "vla")


def test_sampling_log_probs_match_a_recomputation(tokenizer):
    torch.manual_seed(2)
    model = VLA(small_config(), tokenizer).eval()
    batch = make_batch()
    for temperature in (1.0, 0.7):
        res = model.sample(batch, 4, temperature=temperature, generator=torch.Generator().manual_seed(3))
        assert len(res.answers) == 12 and res.path.shape == (12, 20, 2)
        rep = _repeat_batch(batch, 4)
        torch.testing.assert_close(
            model.answer_log_probs(rep, res.answers), res.log_probs, atol=1e-4, rtol=1e-4
        )
        teacher = model.forward_teacher(rep, res.answers)
        torch.testing.assert_close(teacher["path"], res.path, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(teacher["speed_waypoints"], res.speed_waypoints, atol=1e-5, rtol=1e-5)
        # without a reference adapter the reference is the base model; LoRA's B starts at zero: equal
        torch.testing.assert_close(res.ref_log_probs, res.log_probs, atol=1e-4, rtol=1e-4)
    # sampled texts vary at temperature 1 (an untrained model spreads its probability)
    assert len(set(map(tuple, res.answers))) > 1


def test_reference_adapter_is_a_frozen_copy(tokenizer):
    torch.manual_seed(3)
    model = VLA(small_config(train_base=False), tokenizer)
    model.add_reference_adapter()
    assert model.has_reference()
    assert all(not p.requires_grad for n, p in model.llm.named_parameters() if ".reference." in n)
    opt = torch.optim.SGD(list(model.lora_parameters()), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        model.training_loss(make_batch())["loss"].backward()
        opt.step()
    model.eval()
    res = model.sample(make_batch(), 3, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(res.ref_log_probs, res.log_probs)
    rep = _repeat_batch(make_batch(), 3)
    with model.adapter("reference"):
        torch.testing.assert_close(model.answer_log_probs(rep, res.answers), res.ref_log_probs)
    # switching adapters leaves what trains unchanged
    assert all(p.requires_grad for p in model.lora_parameters())
    assert all(not p.requires_grad for n, p in model.llm.named_parameters() if ".reference." in n)


def test_masked_losses(tokenizer):
    torch.manual_seed(4)
    model = VLA(small_config(), tokenizer).eval()  # eval: the ResNet's batch norm uses its running stats
    batch = make_batch()
    full = model.training_loss(batch)
    # a pre-takeover sample (action_weight 0) changes the language loss only
    masked = dict(batch, action_weight=torch.tensor([1.0, 0.0, 1.0]))
    only_first = {k: (v[:1] if isinstance(v, torch.Tensor | list) else v) for k, v in batch.items()}
    m = model.training_loss(masked)
    f = model.training_loss(only_first)
    torch.testing.assert_close(m["path"], f["path"])
    torch.testing.assert_close(m["speed"], f["speed"])
    torch.testing.assert_close(m["language"], full["language"])
    assert int(m["n_action"]) == 1
    # a commentary dream (language_weight 0): its commentary conditions the waypoints but is not learnt
    given = model.training_loss(dict(batch, language_weight=torch.tensor([1.0, 0.0, 1.0])))
    rest = {k: (v[[0, 2]] if isinstance(v, torch.Tensor) else [v[0], v[2]]) for k, v in batch.items()}
    torch.testing.assert_close(given["language"], model.training_loss(rest)["language"])
    torch.testing.assert_close(given["speed"], full["speed"])
    # nothing to supervise: zero losses that still backpropagate
    none = dict(batch, action_weight=torch.zeros(3), language=["", "", ""])
    out = model.training_loss(none)
    assert float(out["loss"]) == 0.0
    out["loss"].backward()


def test_loss_weights_scale_the_terms(tokenizer):
    torch.manual_seed(4)
    model = VLA(small_config(), tokenizer).eval()
    batch = make_batch()
    plain = model.training_loss(batch)
    weighted = model.training_loss(batch, {"speed": 3.0, "language": 0.5, "desired_speed": 2.0})
    assert float(plain["desired_speed"]) > 0  # computed and logged, weighted 0 unless asked for
    standing = dict(batch, speed=torch.tensor([0.0, 1.0, 2.5]))  # starting off is left to the waypoints
    assert float(model.training_loss(standing, {"desired_speed": 1.0})["desired_speed"]) == 0.0
    torch.testing.assert_close(plain["loss"], plain["language"] + plain["path"] + plain["speed"])
    expected = 0.5 * plain["language"] + plain["path"] + 3.0 * plain["speed"] + 2.0 * plain["desired_speed"]
    torch.testing.assert_close(weighted["loss"], expected)
    with pytest.raises(ValueError, match="unknown loss weights"):
        model.training_loss(batch, {"waypoints": 2.0})


def test_training_loss_runs_under_bf16_autocast(tokenizer):
    """Mixed precision (what a GPU learner uses): the embeddings of the image tokens, target points and
    queries come from layers autocast runs in bf16 and are written into the fp32 token embeddings."""
    torch.manual_seed(4)
    model = VLA(small_config(), tokenizer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.training_loss(make_batch())
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.target_point_mlp[0].weight.grad is not None


def test_bev_head_is_an_auxiliary_loss_on_the_image_features(tokenizer):
    from policies.bev import BEV_SHAPE

    torch.manual_seed(6)
    batch = make_batch(2)
    batch["bev"] = (torch.rand(2, *BEV_SHAPE, generator=torch.Generator().manual_seed(1)) < 0.1).float()
    plain = VLA(small_config(), tokenizer)
    assert plain.bev_head is None and "bev" not in plain.training_loss(batch)  # no head: the target is unused
    model = VLA(dataclasses.replace(small_config(), bev_head=True), tokenizer)
    out = model.training_loss(batch)
    torch.testing.assert_close(out["loss"], out["language"] + out["path"] + out["speed"] + out["bev"])
    without = model.training_loss(batch, {"bev": 0.0})
    torch.testing.assert_close(without["loss"], out["loss"] - out["bev"])
    # its gradient trains the vision encoder (the point of it) and leaves the LLM alone
    model.zero_grad()
    model.training_loss(batch, {"language": 0.0, "path": 0.0, "speed": 0.0})["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.vision.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.llm.parameters())
    opt = torch.optim.AdamW(model.bev_head.parameters(), lr=1e-2)
    first = float(out["bev"])
    for _ in range(100):
        opt.zero_grad()
        loss = model.training_loss(batch, {"language": 0.0, "path": 0.0, "speed": 0.0})
        loss["loss"].backward()
        opt.step()
    assert float(loss["bev"]) < 0.3 * first


def test_desired_speed_term_is_the_controllers_speed(tokenizer):
    g = torch.Generator().manual_seed(1)
    wps = torch.randn(5, 10, 2, generator=g).cumsum(1)
    expected = [desired_speed_from_waypoints(w.numpy()) for w in wps]
    torch.testing.assert_close(desired_speed_of(wps), torch.tensor(expected, dtype=torch.float32))
    # a prediction 0.4 m short at 0.75 s: a 0.8 m/s slower controller speed, hardly seen by the waypoint loss
    target = torch.tensor([[i * 2.5, 0.0] for i in range(1, 11)])[None]
    pred = target.clone()
    pred[0, 2, 0] -= 0.4
    waypoint_term = smooth_l1_per_sample(pred, target)
    desired_term = torch.nn.functional.smooth_l1_loss(desired_speed_of(pred), desired_speed_of(target))
    torch.testing.assert_close(desired_term, torch.tensor(0.5 * 0.8**2))
    assert float(desired_term) > 30 * float(waypoint_term)


def test_training_fits_commentary_and_waypoints(tokenizer):
    torch.manual_seed(5)
    model = VLA(small_config(), tokenizer)
    batch = make_batch(2)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = float(model.training_loss(batch)["loss"])
    err0 = (model.eval().predict(batch)["path"] - batch["path"]).abs().mean()
    model.train()
    for _ in range(300):
        opt.zero_grad()
        loss = model.training_loss(batch)
        loss["loss"].backward()
        opt.step()
    assert float(loss["loss"]) < 0.1 * first
    out = model.eval().predict(batch)
    assert out["language"] == batch["language"]
    assert (out["path"] - batch["path"]).abs().mean() < 0.25 * err0
    # merged for driving, one observation at a time runs the lean decoder: same commentary and waypoints
    merged = copy.deepcopy(model).merge_for_inference()
    assert merged._lean is not None
    for i in range(2):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        plain, lean = model.predict(one), merged.predict(one)
        assert lean["language"] == plain["language"] == batch["language"][i : i + 1]
        torch.testing.assert_close(lean["path"], plain["path"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lean["speed_waypoints"], plain["speed_waypoints"], atol=1e-5, rtol=1e-5)


def test_trained_with_commentary_dropout_it_drives_without_commentary(tokenizer):
    torch.manual_seed(9)
    model = VLA(small_config(), tokenizer)
    batch = make_batch(2)
    both = {k: (v + v if isinstance(v, list) else torch.cat([v, v])) for k, v in batch.items()}
    both["language"] = [*batch["language"], "", ""]  # each frame once with, once without its commentary
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    err0 = (model.eval().predict(batch, commentary=False)["path"] - batch["path"]).abs().mean()
    model.train()
    for _ in range(300):
        opt.zero_grad()
        model.training_loss(both)["loss"].backward()
        opt.step()
    model.eval()
    silent, spoken = model.predict(batch, commentary=False), model.predict(batch)
    assert silent["language"] == ["", ""] and spoken["language"] == batch["language"]
    assert silent["path"].shape == (2, 20, 2) and silent["speed_waypoints"].shape == (2, 10, 2)
    assert (silent["path"] - batch["path"]).abs().mean() < 0.25 * err0
    # the empty answer is </s> alone: the waypoints of the teacher-forced empty answer, for each frame alone
    for i in range(2):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        forced = model.forward_teacher(one, [[model.ids[EOS]]])
        torch.testing.assert_close(model.predict(one, commentary=False)["path"], forced["path"])
        torch.testing.assert_close(silent["path"][i : i + 1], forced["path"], atol=1e-5, rtol=1e-5)


def test_marginal_speed_action_sums_the_phrasings_of_each_action(tokenizer):
    torch.manual_seed(10)
    model = VLA(small_config(), tokenizer)
    one = make_batch(1)
    labels = ["Follow the route. Maintain speed."] * 4 + [
        f"Follow the route. {p}." for p in ("Decelerate", "Slow down", "Reduce speed") for _ in range(3)
    ]  # one observation: "Maintain speed" the likeliest phrasing (4/13), decelerating the likeliest action
    batch = _repeat_batch(one, len(labels)) | {"language": labels}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(200):
        opt.zero_grad()
        model.training_loss(batch)["loss"].backward()
        opt.step()
    model.eval()
    greedy = model.predict(one)
    assert greedy["language"] == ["Follow the route. Maintain speed."]
    marginal = model.predict(one, marginal_speed=True)
    assert marginal["language"][0] in labels[4:]
    # the rest of the answer and the waypoints are generated after the chosen phrasing
    ids = tokenizer(marginal["language"][0][:-1], add_special_tokens=False)["input_ids"]
    forced = model.generate(one, forced=[ids])
    torch.testing.assert_close(marginal["speed_waypoints"], forced["speed_waypoints"])
    assert forced["texts"] == marginal["language"]
    # an answer of another form (an instruction's, a takeover's) keeps its greedy text and waypoints
    other = model.generate(one) | {"texts": ["Following the instruction."]}
    kept = model.speed_action_by_marginal(one, other)
    assert kept["texts"] == other["texts"]
    torch.testing.assert_close(kept["path"], other["path"])


def test_lean_decoder_matches_transformers_in_chunks():
    from transformers import Qwen2Config, Qwen2Model

    from policies.lean_decoder import LeanQwen2

    torch.manual_seed(8)
    cfg = Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    model = Qwen2Model(cfg).eval()
    lean = LeanQwen2.build(model)
    assert lean is not None
    x = torch.randn(1, 23, 32)
    with torch.no_grad():
        expected = model(inputs_embeds=x).last_hidden_state
        cache = lean.new_cache(1, 23)
        # a prompt, single tokens, then a block: the shapes generate() feeds
        parts = [lean(x[:, :10], cache)] + [lean(x[:, i : i + 1], cache) for i in range(10, 13)]
        parts.append(lean(x[:, 13:], cache))
    torch.testing.assert_close(torch.cat(parts, 1), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="exceeds the cache"):
        lean(x[:, :1], cache)
    # where the plain loop would not be exact (peft's unmerged adapters), there is none
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert LeanQwen2.build(peft_model.get_base_model()) is None


def test_checkpoint_agent_drives_from_observations(tokenizer, tmp_path):
    torch.manual_seed(6)
    VLA(small_config(), tokenizer).save(tmp_path / "ckpt")
    agent = make_agent(f"checkpoint:{tmp_path / 'ckpt'}")
    assert not agent.privileged
    obs = Observation(
        image=np.zeros((128, 256, 3), np.uint8),
        speed=3.0,
        target_points=np.array([[10.0, 0.0], [30.0, 2.0]]),
        command=int(RoadOption.LANEFOLLOW),
    )  # fmt: skip
    out = agent.act(obs, None)
    assert 0.0 <= out.control.throttle <= 1.0 and -1.0 <= out.control.steer <= 1.0
    assert out.path.shape == (20, 2) and out.speed_waypoints.shape == (10, 2)
    with pytest.raises(CheckpointError, match="does not exist"):
        make_agent(f"checkpoint:{tmp_path / 'nowhere'}")
    # creep (off by default) is reported when on; an instruction goes into the prompt
    creeping = make_agent(f"checkpoint:{tmp_path / 'ckpt'}", creep=True, instruction="Slow down.")
    assert "creep" in creeping.act(obs, None).info and "creep" not in out.info
    with pytest.raises(ValueError, match="unknown instruction mode"):
        make_agent(f"checkpoint:{tmp_path / 'ckpt'}", instruction="Stop.", mode="obey").act(obs, None)
    with pytest.raises(CheckpointError, match="camera"):
        agent.act(Observation(None, 3.0, obs.target_points, obs.command), None)
    # driving without commentary (--agent-arg commentary=false): the policy's empty-answer waypoints
    silent = make_agent(f"checkpoint:{tmp_path / 'ckpt'}", commentary=False).act(obs, None)
    policy = load_policy(tmp_path / "ckpt").eval()
    image = torch.from_numpy(obs.image.transpose(2, 0, 1).copy())[None]
    batch = {"image": image, "speed": torch.tensor([3.0]),
             "target_points": torch.from_numpy(obs.target_points).float()[None]}  # fmt: skip
    expected = policy.predict(batch, commentary=False)
    assert silent.language == ""
    np.testing.assert_allclose(silent.path, expected["path"][0].numpy(), atol=1e-5)
    np.testing.assert_allclose(silent.speed_waypoints, expected["speed_waypoints"][0].numpy(), atol=1e-5)


def test_half_billion_config_sizes():
    cfg = qwen2_05b_config()
    assert cfg.llm.hidden_size == 896 and cfg.llm.num_hidden_layers == 24 and cfg.lora.r == 32
    assert VLAConfig.from_dict(cfg.to_dict()) == cfg


def test_pretrained_llm_folder_brings_its_own_tokenizer(tokenizer, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    # a "pretrained" folder as transformers writes it: weights, config and the model's tokenizer
    base = Qwen2ForCausalLM(
        Qwen2Config(vocab_size=len(tokenizer) - 6, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=4, num_key_value_heads=2)
    )  # fmt: skip
    base.save_pretrained(tmp_path / "qwen")
    tokenizer.save_pretrained(tmp_path / "qwen")
    cfg = small_config(train_base=False)
    cfg.llm.path = str(tmp_path / "qwen")
    model = VLA(cfg)
    own = load_tokenizer(tmp_path / "qwen").backend_tokenizer.to_str()
    assert model.tokenizer.backend_tokenizer.to_str() == own
    assert model.llm.get_base_model().get_input_embeddings().num_embeddings >= len(model.tokenizer)
    assert not any(p.requires_grad for n, p in model.llm.named_parameters() if "lora_" not in n)
    model.save(tmp_path / "ckpt")
    again = VLA.load(tmp_path / "ckpt").eval()
    batch = make_batch()
    assert torch.equal(model.eval().generate(batch)["path"], again.generate(batch)["path"])
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4
        )
    ).save_pretrained(tmp_path / "llama")
    cfg.llm.path = str(tmp_path / "llama")
    with pytest.raises(CheckpointError, match="'llama' model"):
        VLA(cfg, tokenizer)


def test_vit_encoder_gives_a_token_grid():
    from policies.vla import VisionEncoder

    cfg = VLAConfig(
        vision=VisionConfig(type="vit", image_size=(56, 112), hidden_size=32, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=64, patch_size=14, token_grid=(2, 4))
    )  # fmt: skip
    tokens = VisionEncoder(cfg)(torch.randint(0, 256, (2, 3, 128, 256), dtype=torch.uint8))
    assert tokens.shape == (2, 8, 32)
    with pytest.raises(CheckpointError, match="unknown vision encoder type"):
        VisionEncoder(VLAConfig(vision=VisionConfig(type="cnn")))


def test_camera_history_stacks_the_earlier_image_and_the_agent_keeps_it(tokenizer, tmp_path):
    cfg = small_config()
    cfg.vision.history_s = 0.2  # 4 ticks at 20 Hz
    torch.manual_seed(7)
    model = VLA(cfg, tokenizer).eval()
    assert model.history_ticks == 4 and VLA(small_config(), tokenizer).history_ticks == 0
    batch = make_batch(2)
    with pytest.raises(ValueError, match="previous_image"):
        model.predict(batch)
    still = model.predict({**batch, "previous_image": batch["image"]})
    moved = model.predict({**batch, "previous_image": torch.roll(batch["image"], 8, dims=-1)})
    assert not torch.allclose(still["speed_waypoints"], moved["speed_waypoints"])  # the history is seen
    model.save(tmp_path / "ckpt")
    again = load_policy(tmp_path / "ckpt").eval()
    assert again.history_ticks == 4
    with_history = {**batch, "previous_image": batch["image"]}
    torch.testing.assert_close(again.predict(with_history)["path"], still["path"])
    assert again.sample(with_history, n=3).path.shape == (6, 20, 2)  # GRPO's samples see it too
    # the agent, called once a tick, hands the image of 4 ticks earlier (the first one until it has that)
    agent = make_agent(f"checkpoint:{tmp_path / 'ckpt'}")
    seen: list[torch.Tensor] = []
    predict = agent.policy.predict
    agent.policy.predict = lambda b: seen.append(b["previous_image"]) or predict(b)
    agent.reset(None)
    target = np.array([[10.0, 0.0], [30.0, 0.0]])
    for tick in range(7):
        agent.act(Observation(np.full((32, 64, 3), tick, np.uint8), 3.0, target, 0), None)
    assert [int(p[0, 0, 0, 0]) for p in seen] == [0, 0, 0, 0, 0, 1, 2]
    agent.reset(None)  # a new route starts without history
    agent.act(Observation(np.full((32, 64, 3), 9, np.uint8), 3.0, np.zeros((2, 2)), 0), None)
    assert int(seen[-1][0, 0, 0, 0]) == 9
    with pytest.raises(ConfigError, match="history_s"):
        VLAConfig.from_dict({"vision": {"type": "pretrained", "path": "/x", "history_s": 0.4}})
    with pytest.raises(ConfigError, match=">= 0"):
        VLAConfig.from_dict({"vision": {"history_s": -1}})


def test_crop_encodes_that_part_of_the_camera_image(tokenizer, tmp_path):
    from policies.vla import VisionEncoder

    cropped_cfg = small_config()
    cropped_cfg.vision.crop = (8, 16, 16, 32)  # a 16 x 32 window of the 32 x 64 image, resized to 32 x 64
    torch.manual_seed(3)
    cropped = VisionEncoder(cropped_cfg).eval()
    whole = VisionEncoder(small_config()).eval()
    whole.load_state_dict(cropped.state_dict())
    image = torch.randint(0, 256, (2, 3, 32, 64), dtype=torch.uint8)
    window = image[..., 8:24, 16:48]
    torch.testing.assert_close(cropped(image), whole(window))
    # what lies outside the window does not reach the tokens; what lies inside does
    outside = image.clone()
    outside[..., :8, :] = 0
    outside[..., :, 48:] = 255
    torch.testing.assert_close(cropped(outside), cropped(image))
    inside = image.clone()
    inside[..., 10:20, 20:40] = 255 - inside[..., 10:20, 20:40]
    assert not torch.allclose(cropped(inside), cropped(image))
    with pytest.raises(ValueError, match="outside the 16 x 64 camera image"):
        cropped(image[..., :16, :])
    # the crop is part of the checkpoint's config
    model = VLA(cropped_cfg, tokenizer).eval()
    model.save(tmp_path / "ckpt")
    again = load_policy(tmp_path / "ckpt").eval()
    assert again.vision.crop == (8, 16, 16, 32)
    torch.testing.assert_close(again.predict(make_batch())["path"], model.predict(make_batch())["path"])
    with pytest.raises(ConfigError, match="four integers"):
        VLAConfig.from_dict({"vision": {"crop": [0, 0, 16]}})
    with pytest.raises(ConfigError, match="height and width >= 1"):
        VLAConfig.from_dict({"vision": {"crop": [0, 0, 0, 32]}})


def test_fovea_adds_tokens_of_a_full_resolution_window(tokenizer, tmp_path):
    from policies.vla import VisionEncoder

    cfg = small_config()
    cfg.vision.image_size = (16, 32)  # the whole 32 x 64 image at half resolution ...
    cfg.vision.fovea = (8, 16, 16, 32)  # ... and this window at full resolution
    cfg.vision.fovea_grid = (1, 2)
    torch.manual_seed(4)
    enc = VisionEncoder(cfg).eval()
    assert enc.num_tokens == 2 * 4 + 1 * 2
    image = torch.randint(0, 256, (2, 3, 32, 64), dtype=torch.uint8)
    tokens = enc(image)
    assert tokens.shape == (2, 10, 16)
    plain = VisionEncoder(dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, fovea=None))).eval()
    plain.load_state_dict(enc.state_dict())
    torch.testing.assert_close(tokens[:, :8], plain(image))  # the wide view's tokens come first, unchanged
    window = VisionEncoder(dataclasses.replace(cfg, vision=dataclasses.replace(
        cfg.vision, fovea=None, image_size=(16, 32), token_grid=(1, 2))))  # fmt: skip
    window.load_state_dict(enc.state_dict())
    torch.testing.assert_close(tokens[:, 8:], window.eval()(image[..., 8:24, 16:48]))
    with pytest.raises(ValueError, match=r"vision\.fovea .* outside the 20 x 64 camera image"):
        enc(image[..., :20, :])
    # the whole model takes the extra tokens; checkpoints keep the fovea
    model = VLA(cfg, tokenizer).eval()
    model.save(tmp_path / "ckpt")
    again = load_policy(tmp_path / "ckpt").eval()
    assert again.vision.fovea == (8, 16, 16, 32) and again.vision.num_tokens == 10
    torch.testing.assert_close(again.predict(make_batch())["path"], model.predict(make_batch())["path"])
    assert again.generate(make_batch())["path"].shape == (3, 20, 2)
    with pytest.raises(ConfigError, match=r"vision\.fovea must be four integers"):
        VLAConfig.from_dict({"vision": {"fovea": [1, 2]}})
    with pytest.raises(ConfigError, match="takes its image_size"):
        VLAConfig.from_dict({"vision": {"type": "vit", "fovea": [0, 0, 8, 8], "fovea_size": [8, 8]}})
