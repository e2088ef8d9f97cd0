"""`takeover scenarios render`: a gallery of the scenario types in a route file, one bird's-eye image each.

For every scenario type present in the route file (the first route that has it), the route is driven
with the privileged `lane_follow` agent, with only that scenario instance active, until the scenario's
trigger plus its `key_moment_s` (or until the route ends); the bird's-eye view centred on the ego is
then written as `<Type>.png` (optionally with a short clip around the trigger), and `index.md` lists
every image, or the error that kept a type from rendering. Implemented types the file lacks can be
placed on its routes with the training sampler (`sample_missing`).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from envs.routes import RouteSpec, ScenarioSpec
from envs.sumo_backend import TrafficConfig

GALLERY_TRAFFIC = TrafficConfig(vehicles=10, pedestrians=4)
PRE_TRIGGER_CLIP_S = 3.0  # seconds of clip before the trigger
POST_KEY_CLIP_S = 1.5  # and after the key moment


@dataclass
class GalleryItem:
    type: str
    route_id: str = ""
    map: str = ""
    image: str | None = None  # file name inside the gallery folder
    clip: str | None = None
    ok: bool = False
    note: str = ""
    sampled: bool = False  # placed by the sampler (the type was not in the route file)
    seconds: float = 0.0  # wall time


@dataclass
class GalleryJob:
    map: str
    routes: str
    out: Path
    types: Sequence[str] | None = None
    clip: bool = False
    sample_missing: bool = False
    seed: int = 0
    traffic: TrafficConfig = field(default_factory=lambda: GALLERY_TRAFFIC)
    size: int = 480  # image side in pixels
    meters_per_pixel: float = 0.2
    max_ticks: int = 4000
    log: Callable[[str], None] = print


def _catalog_order(types: Sequence[str]) -> list[str]:
    from envs.scenarios.catalog import TYPES_BY_NAME

    order = {name: k for k, name in enumerate(TYPES_BY_NAME)}
    return sorted(dict.fromkeys(types), key=lambda t: (order.get(t, len(order)), t))


def plan_gallery(job: GalleryJob) -> tuple[list[tuple[str, RouteSpec, ScenarioSpec]], list[GalleryItem]]:
    """(map, route spec, scenario spec) per type to render, in catalogue order, and items that are
    already settled (types asked for but absent from the file)."""
    from envs.scenarios.catalog import TYPES_BY_NAME
    from envs.scenarios.sampler import SamplerError, implemented_types
    from takeover.drive import DriveJob, plan_jobs

    wanted = None
    if job.types:
        wanted = [t.strip() for t in job.types if t.strip()]
        unknown = [t for t in wanted if t not in TYPES_BY_NAME]
        if unknown:
            raise SamplerError(f"unknown scenario type(s) {', '.join(unknown)}")
    groups = plan_jobs(DriveJob(map=job.map, out=job.out, routes=job.routes, log=job.log))
    first: dict[str, tuple[str, RouteSpec, ScenarioSpec]] = {}
    for map_path, specs in groups:
        for spec in specs or []:
            for sc in spec.scenarios:
                if sc.type and (wanted is None or sc.type in wanted) and sc.type not in first:
                    first[sc.type] = (map_path, spec, sc)
    settled: list[GalleryItem] = []
    if job.sample_missing:
        missing = [t for t in implemented_types() if t not in first and (wanted is None or t in wanted)]
        if missing:
            placed = _sample_missing(job, groups, missing)
            first.update(placed)
            for t in missing:
                if t not in placed:
                    settled.append(GalleryItem(t, note="no valid place for it on the file's routes"))
    implemented = set(implemented_types())
    for t in wanted or []:
        if t not in first and not any(i.type == t for i in settled):
            note = ("not in the route file (use --sample-missing)" if t in implemented
                    else "not in the route file, and not implemented")
            settled.append(GalleryItem(t, note=note))
    plan = [first[t] for t in _catalog_order(list(first))]
    return plan, settled


def _sample_missing(job: GalleryJob, groups: list, missing: list[str]) -> dict[str, tuple]:
    """One sampled instance per missing type, on the first route (in file order) that has room for it."""
    from envs.maps.build import resolve_map
    from envs.maps.network import load_lane_graph
    from envs.routes import RouteFileError, map_route
    from envs.scenarios.base import SCENARIOS
    from envs.scenarios.sampler import candidates_for, trigger_of

    rng = np.random.default_rng(job.seed)
    placed: dict[str, tuple] = {}
    for map_path, specs in groups:
        if not specs or len(placed) == len(missing):
            continue
        lanes = load_lane_graph(resolve_map(map_path))
        for spec in specs:
            try:
                route = map_route(spec, lanes)
            except RouteFileError:
                continue
            for t in missing:
                if t in placed:
                    continue
                cls = SCENARIOS[t]
                cands = candidates_for(cls, route, lanes)
                if not len(cands):
                    continue
                s = float(cands[len(cands) // 2])  # the middle candidate: clear of both route ends
                params = {k: (v if isinstance(v, dict) else {"value": str(v)})
                          for k, v in (cls.sample_params(rng) or {}).items()}
                sc = ScenarioSpec(f"{t}_sampled", t, trigger_of(route, lanes, s), params)
                placed[t] = (map_path, spec, sc)
    return placed


def _title_image(bev: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    line_h = 14
    h = len(lines) * line_h + 8
    im = Image.new("RGB", (bev.shape[1], bev.shape[0] + h), (16, 16, 16))
    im.paste(Image.fromarray(np.asarray(bev, np.uint8)), (0, h))
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    for k, line in enumerate(lines):
        draw.text((6, 4 + k * line_h), line, fill=(240, 240, 240), font=font)
    return np.asarray(im, np.uint8)


class _MapSession:
    """One DrivingEnv (and BEV raster) per map; rebuilt after a simulator failure."""

    def __init__(self, job: GalleryJob, map_path: str):
        self.job = job
        self.map_path = map_path
        self.env = None
        self.raster = None

    def open(self):
        if self.env is None:
            from envs.driving_env import DrivingEnv, EnvConfig
            from envs.render import BevRenderer
            from envs.render_map import MapRaster

            cfg = EnvConfig(map=self.map_path, routes=self.job.routes, traffic=self.job.traffic,
                            max_ticks=self.job.max_ticks)
            cfg.camera.enabled = False
            self.env = DrivingEnv(cfg)
            self.raster = MapRaster.build(self.env.lanes)
            side = int(self.job.size)
            mpp = self.job.meters_per_pixel
            self.bev = BevRenderer((side, side), meters_per_pixel=mpp, ego_frac=0.5, route_ahead_m=side * mpp)
        return self.env

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
        self.env = None


def _render_one(session: _MapSession, spec: RouteSpec, sc: ScenarioSpec, item: GalleryItem) -> None:
    from envs.render import write_video
    from envs.sumo_backend import SimulatorError
    from policies.base import make_agent

    job = session.job
    env = session.open()
    try:
        env.reset(seed=job.seed, options={"route_id": spec.route_id, "scenarios": [sc]})
    except SimulatorError:
        session.close()
        raise
    (scenario,) = env.scenarios
    if not scenario.status.implemented:
        raise ValueError(f"scenario type {sc.type} is not implemented")
    key_s = float(getattr(scenario, "key_moment_s", 3.0))
    agent = make_agent("lane_follow")
    agent.reset(env.route)
    pre = deque(maxlen=max(int(PRE_TRIGGER_CLIP_S / (2 * env.scene.dt)), 1))
    frames: deque = deque(maxlen=max(int((key_s + POST_KEY_CLIP_S + 1.0) / (2 * env.scene.dt)), 1))
    end_reason = ""
    image: np.ndarray | None = None
    key_scene_time = 0.0
    post_ticks = 0
    key_tick = None
    try:
        while True:
            out = agent.act(env.observation(), env.scene)
            _, _, terminated, truncated, info = env.step(out.control.as_array())
            scene = env.scene
            triggered = scenario.status.triggered
            if job.clip and scene.tick % 2 == 0:
                (frames if triggered else pre).append(session.bev.render(scene, session.raster))
            if key_tick is None and triggered and scenario.seconds_since_trigger(scene) >= key_s:
                key_tick = scene.tick
                image = session.bev.render(scene, session.raster)
                key_scene_time = scene.time
                if not job.clip:
                    break
            if key_tick is not None:
                post_ticks += 1
                if post_ticks * scene.dt >= POST_KEY_CLIP_S:
                    break
            if terminated or truncated:
                end_reason = info["status"]
                break
    except SimulatorError:
        session.close()
        raise
    scene = env.scene
    if key_tick is None:
        image = session.bev.render(scene, session.raster)
        key_scene_time = scene.time
        where = "before the trigger" if not scenario.status.triggered else "before the key moment"
        item.note = f"route ended {where} ({end_reason}); last frame shown"
    else:
        item.note = f"{key_s:g} s after the trigger"
    since = scenario.seconds_since_trigger(scene) if key_tick is None else key_s
    lines = [
        f"{sc.type}  -  route {spec.route_id}" + (" (sampled instance)" if item.sampled else ""),
        f"t={key_scene_time:.1f}s  " + (f"{since:+.1f}s from trigger" if scenario.status.triggered
                                        else "not triggered") + f"  ego {scene.ego.speed * 3.6:.0f} km/h",
    ]
    from PIL import Image

    item.image = f"{sc.type}.png"
    Image.fromarray(_title_image(image, lines)).save(job.out / item.image)
    if job.clip:
        clip_frames = [_title_image(f, lines[:1]) for f in [*pre, *frames]]
        clip_frames = clip_frames or [_title_image(image, lines[:1])]
        item.clip = Path(write_video(clip_frames, job.out / f"{sc.type}.mp4", fps=10)).name
    item.ok = True


def write_index(out: Path, items: Sequence[GalleryItem], routes: str, map_arg: str) -> Path:
    lines = [
        "# Scenario gallery",
        "",
        f"Route file `{routes}`, map `{map_arg}`. Bird's-eye view centred on the ego (driving up), "
        "at the scenario's key moment, with the `lane_follow` agent.",
        "",
        "| Scenario type | Route | Image | Note |",
        "|---|---|---|---|",
    ]
    for it in items:
        if it.ok and it.image:
            cell = f"![{it.type}]({it.image})" + (f" [clip]({it.clip})" if it.clip else "")
        else:
            cell = "error"
        note = it.note.replace("|", "\\|").replace("\n", " ")
        rid = f"{it.route_id}{' (sampled)' if it.sampled else ''}" if it.route_id else "-"
        lines.append(f"| {it.type} | {rid} | {cell} | {note} |")
    path = out / "index.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def render_gallery(job: GalleryJob) -> list[GalleryItem]:
    """Render every scenario type of the route file; errors are recorded per type, never raised."""
    job.out.mkdir(parents=True, exist_ok=True)
    plan, settled = plan_gallery(job)
    items: list[GalleryItem] = []
    sessions: dict[str, _MapSession] = {}
    n = len(plan)
    try:
        for k, (map_path, spec, sc) in enumerate(plan):
            item = GalleryItem(sc.type, spec.route_id, map_path, sampled=sc.name.endswith("_sampled"))
            t0 = time.time()
            for other, sess in list(sessions.items()):  # one SUMO instance at a time
                if other != map_path:
                    sess.close()
                    del sessions[other]
            session = sessions.setdefault(map_path, _MapSession(job, map_path))
            try:
                _render_one(session, spec, sc, item)
            except Exception as exc:  # one type's failure must not stop the gallery
                item.ok = False
                item.note = f"{type(exc).__name__}: {exc}"
            item.seconds = time.time() - t0
            items.append(item)
            status = f"-> {item.image}" if item.ok else "FAILED"
            job.log(f"[{k + 1}/{n}] {sc.type}: route {spec.route_id} {status} ({item.note}; "
                    f"{math.ceil(item.seconds)} s)")
    finally:
        for sess in sessions.values():
            sess.close()
    for item in settled:
        job.log(f"[-] {item.type}: {item.note}")
    items += settled
    write_index(job.out, items, job.routes, job.map)
    return items
