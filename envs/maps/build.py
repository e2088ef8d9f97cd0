"""Road networks as SUMO `.net.xml` files: CARLA OpenDRIVE towns converted with netconvert, and procedural
maps (urban grid, highway, rural road) generated here from SUMO plain XML, so no map files are needed.

Every result is cached under `<cache>/nets/` (cache = `cache_dir`, else $TAKEOVER_CACHE, else
~/.cache/takeover), keyed by a sha256 of everything that determines it (input content, netconvert options,
SUMO version). Entries are written atomically, and netconvert's chatter goes to a `.log` beside the net.

netconvert's offset normalisation is kept on purpose: a CARLA point (x, y) is (x + ox, -y + oy) in the net,
with (ox, oy) the net's `<location netOffset>`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


class MapError(RuntimeError):
    """A map could not be found, generated or converted."""


REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MAPS_DIR = REPO_ROOT.parent / "shared" / "data" / "carla" / "maps"

# Bump when the conversion recipe changes in a way the cache key would not otherwise see.
_RECIPE_VERSION = 1
_NETCONVERT_TIMEOUT_S = 600
_INSTALL_HINT = (
    "install SUMO with `pip install eclipse-sumo` (or put SUMO's bin folder on PATH / set SUMO_HOME)"
)

# OpenDRIVE import: SUMO's default OpenDRIVE lane types plus its pedestrian typemap, so CARLA's own
# sidewalk lanes are imported (they match CARLA's geometry, unlike --sidewalks.guess, which also puts
# sidewalks on Town04's highway), and crossings are guessed between them at junctions.
_OPENDRIVE_TYPEMAPS = ("opendriveNetconvert.typ.xml", "opendriveNetconvertPedestrians.typ.xml")
_OPENDRIVE_OPTIONS = ("--crossings.guess", "true")

# Procedural maps: static signal plans (each map adds its own options, e.g. where U-turns are allowed).
_PLAIN_OPTIONS = ("--tls.default-type", "static")

_TRAFFIC_LIGHT_SIGNAL_TYPE = "1000001"  # OpenDRIVE/German catalogue code of a traffic light


# -------------------------------------------------------------------------------------------------
# SUMO discovery


def _configured_sumo_homes() -> list[Path]:
    """SUMO homes named by the eclipse-sumo wheel (`sumo.SUMO_HOME`) and by $SUMO_HOME, in that order."""
    out: list[Path] = []
    try:
        import sumo  # the eclipse-sumo wheel

        out.append(Path(sumo.SUMO_HOME))
    except ImportError:
        pass
    if os.environ.get("SUMO_HOME"):
        out.append(Path(os.environ["SUMO_HOME"]))
    return out


def _sumo_home_candidates(binary: str) -> list[Path]:
    """Where SUMO's data folder may be: configured homes, beside the binary, then distribution paths."""
    return [
        *_configured_sumo_homes(),
        Path(binary).resolve().parent.parent,
        Path("/usr/share/sumo"),
        Path("/usr/local/share/sumo"),
    ]


def netconvert_binary() -> str:
    """Path of SUMO's netconvert: `sumo.SUMO_HOME`/bin (the eclipse-sumo wheel), $SUMO_HOME/bin, then PATH."""
    exe = "netconvert.exe" if os.name == "nt" else "netconvert"
    for home in _configured_sumo_homes():
        cand = home / "bin" / exe
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("netconvert")
    if found:
        return found
    raise MapError(f"SUMO's netconvert was not found; {_INSTALL_HINT}")


@lru_cache(maxsize=8)
def _sumo_version(binary: str) -> str:
    """SUMO version string; from the wheel's metadata when the binary is the wheel's (no subprocess)."""
    try:
        import importlib.metadata

        import sumo

        if Path(binary).resolve().is_relative_to(Path(sumo.SUMO_HOME).resolve()):
            return "eclipse-sumo " + importlib.metadata.version("eclipse-sumo")
    except Exception:
        pass
    try:
        res = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise MapError(f"cannot run {binary}: {exc}; {_INSTALL_HINT}") from exc
    first = (res.stdout or res.stderr).strip().splitlines()
    return first[0] if first else "unknown"


def _typemap(name: str, binary: str) -> Path | None:
    for home in _sumo_home_candidates(binary):
        cand = home / "data" / "typemap" / name
        if cand.is_file():
            return cand
    return None


# -------------------------------------------------------------------------------------------------
# Cache + netconvert runner


def default_cache_dir() -> Path:
    return Path(os.environ.get("TAKEOVER_CACHE") or Path.home() / ".cache" / "takeover")


def _nets_dir(cache_dir: str | os.PathLike | None) -> Path:
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / "nets"


def _safe_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60] or "net"


def _error_excerpt(text: str, limit: int = 20) -> str:
    """netconvert's error lines (warnings dropped), or the tail of its output when none is marked."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if not ln.startswith("Warning")]
    picked = errors or lines
    return "\n".join("    " + ln for ln in picked[-limit:])


def _netconvert_cached(
    stem: str,
    key: dict,
    cache_dir: str | os.PathLike | None,
    make_args: Callable[[Path], list[str]],
    what: str,
) -> Path:
    """Return the cached net for `key`, running netconvert (args from `make_args(tmpdir)`) on a miss.

    netconvert writes into a temporary folder beside the cache entry, which is then renamed into place, so
    an interrupted run never leaves a partial `.net.xml` under the final name.
    """
    binary = netconvert_binary()
    key = {**key, "recipe": _RECIPE_VERSION, "sumo": _sumo_version(binary)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    nets = _nets_dir(cache_dir)
    out = nets / f"{_safe_stem(stem)}-{digest}.net.xml"
    if out.is_file():
        return out
    log = out.with_name(out.name[: -len(".net.xml")] + ".log")
    nets.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=nets, prefix=f".tmp-{_safe_stem(stem)}-") as tmp_str:
        tmp = Path(tmp_str)
        tmp_out = tmp / "out.net.xml"
        cmd = [binary, *make_args(tmp), "--output-file", str(tmp_out)]
        try:
            res = subprocess.run(
                cmd, capture_output=True, text=True, timeout=_NETCONVERT_TIMEOUT_S, cwd=tmp, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise MapError(f"netconvert timed out after {_NETCONVERT_TIMEOUT_S} s on {what}") from exc
        except OSError as exc:
            raise MapError(f"cannot run netconvert ({binary}): {exc}; {_INSTALL_HINT}") from exc
        tmp_log = tmp / "out.log"
        tmp_log.write_text(
            f"$ {' '.join(cmd)}\n# exit status {res.returncode}\n{res.stdout}{res.stderr}", encoding="utf-8"
        )
        os.replace(tmp_log, log)
        if res.returncode != 0 or not tmp_out.is_file() or tmp_out.stat().st_size == 0:
            raise MapError(
                f"netconvert failed on {what} (exit status {res.returncode}):\n"
                f"{_error_excerpt(res.stderr or res.stdout)}\nfull log: {log}"
            )
        os.replace(tmp_out, out)
    return out


# -------------------------------------------------------------------------------------------------
# OpenDRIVE


def _signal_free_intersections(root: ET.Element) -> list[str]:
    """Ids of OpenDRIVE junctions that are real intersections: >= 3 incoming roads with driving lanes.

    Used for files that carry no traffic-light signals (CARLA's 2019 Town03/Town05). netconvert's
    `--tls.guess` is no good there: its threshold sums each incoming edge's lane count times the speed of
    lane 0, which is the imported sidewalk (2.78 m/s), so it finds no junction at the default threshold,
    and lowering the threshold puts lights on Town03's roundabout. Roundabout entries and highway merges
    have only two incoming roads and are left unsignalised.
    """
    driving_roads = {
        r.get("id")
        for r in root.iter("road")
        if any(lane.get("type") == "driving" for lane in r.iter("lane"))
    }
    ids = []
    for junction in root.iter("junction"):
        incoming = {
            c.get("incomingRoad")
            for c in junction.iter("connection")
            if c.get("connectingRoad") in driving_roads
        }
        if len(incoming) >= 3 and junction.get("id"):
            ids.append(junction.get("id"))
    return sorted(ids, key=lambda s: (len(s), s))


def _has_traffic_light_signals(root: ET.Element) -> bool:
    return any(
        s.get("type") == _TRAFFIC_LIGHT_SIGNAL_TYPE or s.get("dynamic") == "yes" for s in root.iter("signal")
    )


def convert_opendrive(xodr_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Convert an OpenDRIVE file to a SUMO net (cached by file content); returns the `.net.xml` path.

    Options: OpenDRIVE signals are kept (netconvert turns them into traffic lights); CARLA's sidewalk lanes
    are imported and crossings guessed; files without any traffic-light signal get lights at their
    intersections (see `_signal_free_intersections`). Junctions are not joined (CARLA junctions are already
    one OpenDRIVE junction each) and internal lanes are netconvert's own, which join the edges without gaps.
    """
    path = Path(xodr_path).expanduser()
    if not path.is_file():
        raise MapError(f"OpenDRIVE file not found: {path}")
    data = path.read_bytes()
    binary = netconvert_binary()
    typemaps = [p for p in (_typemap(n, binary) for n in _OPENDRIVE_TYPEMAPS) if p is not None]
    if len(typemaps) != len(_OPENDRIVE_TYPEMAPS):
        typemaps = []  # incomplete SUMO data folder: fall back to netconvert's built-in lane types
    key = {
        "kind": "opendrive",
        "sha256": hashlib.sha256(data).hexdigest(),
        "options": list(_OPENDRIVE_OPTIONS),
        "typemaps": [p.name for p in typemaps],
    }

    def make_args(tmp: Path) -> list[str]:
        try:
            root = ET.fromstring(data)
        except ET.ParseError as exc:
            raise MapError(f"{path} is not valid XML: {exc}") from None
        if root.tag != "OpenDRIVE":
            raise MapError(
                f"{path} is not an OpenDRIVE file (root element <{root.tag}>, expected <OpenDRIVE>)"
            )
        args = ["--opendrive-files", str(path.resolve()), *_OPENDRIVE_OPTIONS]
        if typemaps:
            args += ["--type-files", ",".join(str(p) for p in typemaps)]
        if not _has_traffic_light_signals(root):
            ids = _signal_free_intersections(root)
            if ids:
                args += ["--tls.set", ",".join(ids)]
        return args

    return _netconvert_cached(path.name.removesuffix(".xodr"), key, cache_dir, make_args, str(path))


# -------------------------------------------------------------------------------------------------
# Procedural maps (SUMO plain XML)


@dataclass(frozen=True)
class PlainNetwork:
    """SUMO plain-XML inputs for netconvert (file contents), plus extra netconvert options."""

    nodes: str
    edges: str
    connections: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProceduralMap:
    description: str
    generate: Callable[..., PlainNetwork]

    def __call__(self, **params: object) -> PlainNetwork:
        return self.generate(**params)


Point = tuple[float, float]


def _shape(points: Iterable[Point]) -> str:
    return " ".join(f"{x:.2f},{y:.2f}" for x, y in points)


def _xml(root: str, rows: Sequence[str]) -> str:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}>\n' + "\n".join(rows) + f"\n</{root}>\n"


def _node(node_id: str, x: float, y: float, node_type: str) -> str:
    return f'    <node id="{node_id}" x="{x:.2f}" y="{y:.2f}" type="{node_type}"/>'


def _edge(edge_id: str, frm: str, to: str, lanes: int, speed: float, **attrs: object) -> str:
    extra = "".join(f' {k}="{v}"' for k, v in attrs.items() if v is not None)
    return f'    <edge id="{edge_id}" from="{frm}" to="{to}" numLanes="{lanes}" speed="{speed:.2f}"{extra}/>'


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise MapError(msg)


def urban_grid(
    rows: int = 4,
    cols: int = 4,
    block: float = 90.0,
    lanes: int = 1,
    speed: float = 13.89,
    stub: float = 60.0,
    lane_width: float = 3.5,
    sidewalk_width: float = 2.0,
) -> PlainNetwork:
    """rows x cols junctions `J{r}_{c}` at (stub + c*block, stub + r*block), two-way streets between them.

    Each border junction also gets a two-way stub street to a dead end (`N{c}`, `S{c}`, `W{r}`, `E{r}`),
    so every grid junction is a 4-way crossing and routes can start/end on the stubs, e.g. `W0toJ0_0` in,
    `J{rows-1}_{cols-1}toE{rows-1}` out. Street ids are `{from}to{to}`.
    Junction control is a fixed pattern: traffic lights where r + c is even; otherwise all-way stop on even
    rows and priority-stop on odd rows (east-west streets have priority, north-south ones stop).
    All streets have sidewalks (lane 0) and crossings are guessed at every junction.
    """
    _check(rows >= 2 and cols >= 2, "urban_grid needs rows >= 2 and cols >= 2")
    _check(1 <= lanes <= 3, "urban_grid lanes (per direction) must be 1..3")
    _check(block >= 40.0 and stub >= 20.0, "urban_grid block must be >= 40 m and stub >= 20 m")

    def jid(r: int, c: int) -> str:
        return f"J{r}_{c}"

    def control(r: int, c: int) -> str:
        if (r + c) % 2 == 0:
            return "traffic_light"
        return "allway_stop" if r % 2 == 0 else "priority_stop"

    nodes: list[str] = []
    for r in range(rows):
        for c in range(cols):
            nodes.append(_node(jid(r, c), stub + c * block, stub + r * block, control(r, c)))
    x_max, y_max = 2 * stub + (cols - 1) * block, 2 * stub + (rows - 1) * block
    stubs: list[tuple[str, str]] = []  # (dead-end node, grid junction)
    for c in range(cols):
        nodes.append(_node(f"S{c}", stub + c * block, 0.0, "dead_end"))
        nodes.append(_node(f"N{c}", stub + c * block, y_max, "dead_end"))
        stubs += [(f"S{c}", jid(0, c)), (f"N{c}", jid(rows - 1, c))]
    for r in range(rows):
        nodes.append(_node(f"W{r}", 0.0, stub + r * block, "dead_end"))
        nodes.append(_node(f"E{r}", x_max, stub + r * block, "dead_end"))
        stubs += [(f"W{r}", jid(r, 0)), (f"E{r}", jid(r, cols - 1))]

    pairs: list[tuple[str, str, int]] = []  # (a, b, priority); east-west streets rank above north-south
    for r in range(rows):
        for c in range(cols - 1):
            pairs.append((jid(r, c), jid(r, c + 1), 2))
    for c in range(cols):
        for r in range(rows - 1):
            pairs.append((jid(r, c), jid(r + 1, c), 1))
    for end, j in stubs:
        pairs.append((end, j, 2 if end[0] in "WE" else 1))
    edges = []
    for a, b, prio in pairs:
        for frm, to in ((a, b), (b, a)):
            edges.append(
                _edge(
                    f"{frm}to{to}",
                    frm,
                    to,
                    lanes,
                    speed,
                    priority=prio,
                    width=lane_width,
                    sidewalkWidth=sidewalk_width,
                )
            )
    return PlainNetwork(
        nodes=_xml("nodes", nodes),
        edges=_xml("edges", edges),
        # U-turns only at the dead ends, never inside a junction.
        options=(
            "--crossings.guess",
            "true",
            "--walkingareas",
            "true",
            "--no-turnarounds.except-deadend",
            "true",
        ),
    )


def _thin(points: list[Point], every: int = 5) -> list[Point]:
    """Every `every`-th point, always keeping the last."""
    out = points[::every]
    return out if (len(points) - 1) % every == 0 else [*out, points[-1]]


def _smoothstep(s: float) -> float:
    return s * s * (3.0 - 2.0 * s)


def highway(
    length: float = 2000.0,
    speed: float = 33.33,
    lanes: int = 3,
    ramp_speed: float = 22.22,
    lane_width: float = 3.65,
    bend: float = 40.0,
    reverse: bool = True,
) -> PlainNetwork:
    """A one-way motorway heading east (x grows), bending gently (y = bend * sin(pi x / length)).

    Main edges in driving order: `main_in` -> `main_merge` (one extra lane 0: the acceleration lane fed by
    `on_ramp`; it ends, so ramp traffic must merge left) -> `main_mid` -> `main_diverge` (lane 0 is added:
    the deceleration lane into `off_ramp`) -> `main_out`. Routes: `main_in` -> `main_out`,
    `on_ramp` -> `main_out`, `main_in` -> `off_ramp`. With `reverse`, `reverse` is the westbound
    carriageway (one edge, beyond a 3 m median on the north side).
    """
    _check(length >= 1000.0, "highway length must be >= 1000 m")
    _check(2 <= lanes <= 5, "highway lanes must be 2..5")
    w = lane_width

    def centre(x: float) -> float:
        return bend * math.sin(math.pi * x / length)

    def along(x0: float, x1: float, offset: float = 0.0, step: float = 10.0) -> list[Point]:
        n = max(1, math.ceil(abs(x1 - x0) / step))
        return [(x0 + (x1 - x0) * i / n, centre(x0 + (x1 - x0) * i / n) + offset) for i in range(n + 1)]

    ramp_len, ramp_offset = 300.0, 60.0
    x_on = 0.3 * length
    x_merge_end = x_on + 250.0
    x_off = 0.75 * length
    x_diverge = x_off - 200.0
    xs = {"h0": 0.0, "h1": x_on, "h2": x_merge_end, "h3": x_diverge, "h4": x_off, "h5": length}
    nodes = [_node(n, x, centre(x), "priority") for n, x in xs.items()]

    def ramp(x0: float, x1: float, entering: bool) -> list[Point]:
        """Ramp centre-of-left-border line: parallel to the main road at both ends, `ramp_offset` apart."""
        pts = []
        n = 30
        for i in range(n + 1):
            s = i / n
            x = x0 + (x1 - x0) * s
            lateral = ramp_offset * (1.0 - _smoothstep(s) if entering else _smoothstep(s))
            pts.append((x, centre(x) - lanes * w - lateral))
        return pts

    on_shape = ramp(x_on - ramp_len, x_on, entering=True)
    off_shape = ramp(x_off, x_off + ramp_len, entering=False)
    nodes.append(_node("on_start", *on_shape[0], "dead_end"))
    nodes.append(_node("off_end", *off_shape[-1], "dead_end"))

    kw = {"width": w, "spreadType": "right", "disallow": "pedestrian bicycle"}  # a motorway
    main = [
        ("main_in", "h0", "h1", lanes),
        ("main_merge", "h1", "h2", lanes + 1),
        ("main_mid", "h2", "h3", lanes),
        ("main_diverge", "h3", "h4", lanes + 1),
        ("main_out", "h4", "h5", lanes),
    ]
    edges = [
        _edge(eid, a, b, n, speed, priority=3, shape=_shape(along(xs[a], xs[b])), **kw)
        for eid, a, b, n in main
    ]
    edges.append(_edge("on_ramp", "on_start", "h1", 1, ramp_speed, priority=1, shape=_shape(on_shape), **kw))
    edges.append(_edge("off_ramp", "h4", "off_end", 1, ramp_speed, priority=1, shape=_shape(off_shape), **kw))

    con = []

    def link(frm: str, to: str, pairs: Iterable[tuple[int, int]]) -> None:
        con.extend(f'    <connection from="{frm}" to="{to}" fromLane="{a}" toLane="{b}"/>' for a, b in pairs)

    link("main_in", "main_merge", [(i, i + 1) for i in range(lanes)])
    link("on_ramp", "main_merge", [(0, 0)])
    link("main_merge", "main_mid", [(i + 1, i) for i in range(lanes)])  # lane 0 (acceleration lane) ends
    link("main_mid", "main_diverge", [(0, 0)] + [(i, i + 1) for i in range(lanes)])
    link("main_diverge", "main_out", [(i + 1, i) for i in range(lanes)])
    link("main_diverge", "off_ramp", [(0, 0)])

    if reverse:
        median = 3.0
        nodes.append(_node("r0", length, centre(length) + median, "dead_end"))
        nodes.append(_node("r1", 0.0, centre(0.0) + median, "dead_end"))
        shape = _shape(reversed(along(0.0, length, offset=median)))
        edges.append(_edge("reverse", "r0", "r1", lanes, speed, priority=3, shape=shape, **kw))
    return PlainNetwork(
        nodes=_xml("nodes", nodes),
        edges=_xml("edges", edges),
        connections=_xml("connections", con),
        options=("--no-turnarounds", "true"),
    )


def rural(
    length: float = 2000.0,
    speed: float = 19.44,
    lane_width: float = 3.25,
    side_length: float = 300.0,
    side_speed: float = 13.89,
) -> PlainNetwork:
    """A curvy two-lane two-way road (one lane each way) of about `length` metres, heading roughly east.

    Edges: `main_a` (west end `W` -> T-junction `T`), `main_b` (`T` -> east end `E`) and their reverses
    `-main_a`, `-main_b`; the side road `side` (`T` -> `S`, south) and `-side` (`S` -> `T`), which yields at
    the priority T-junction. Curve radii are >= ~150 m. Routes: `main_a` -> `main_b`, `-main_b` -> `-main_a`,
    `-side` -> `main_b`.
    """
    _check(length >= 500.0, "rural length must be >= 500 m")

    def centre(x: float) -> float:
        return 70.0 * math.sin(2 * math.pi * x / 1000.0) + 20.0 * math.sin(2 * math.pi * x / 450.0 + 1.0)

    pts: list[Point] = [(0.0, centre(0.0))]
    arc = [0.0]
    x = 0.0
    while arc[-1] < length:
        x += 2.0
        p = (x, centre(x))
        arc.append(arc[-1] + math.dist(pts[-1], p))
        pts.append(p)
    i_t = min(range(len(arc)), key=lambda i: abs(arc[i] - 0.45 * length))
    first, second = _thin(pts[: i_t + 1]), _thin(pts[i_t:])
    tx, ty = pts[i_t]
    # Side road leaves perpendicular to the main road's tangent (to its right, i.e. southwards), then bends.
    hx, hy = pts[i_t + 1][0] - pts[i_t - 1][0], pts[i_t + 1][1] - pts[i_t - 1][1]
    norm = math.hypot(hx, hy)
    rx, ry = hy / norm, -hx / norm  # right-hand normal
    fx, fy = hx / norm, hy / norm  # forward
    side: list[Point] = []
    for k in range(31):
        s = k / 30
        d, bend = side_length * s, 40.0 * _smoothstep(s)
        side.append((tx + rx * d + fx * bend, ty + ry * d + fy * bend))

    nodes = [
        _node("W", *pts[0], "dead_end"),
        _node("T", tx, ty, "priority"),
        _node("E", *pts[-1], "dead_end"),
        _node("S", *side[-1], "dead_end"),
    ]
    kw = {"width": lane_width}
    edges = [
        _edge("main_a", "W", "T", 1, speed, priority=3, shape=_shape(first), **kw),
        _edge("-main_a", "T", "W", 1, speed, priority=3, shape=_shape(reversed(first)), **kw),
        _edge("main_b", "T", "E", 1, speed, priority=3, shape=_shape(second), **kw),
        _edge("-main_b", "E", "T", 1, speed, priority=3, shape=_shape(reversed(second)), **kw),
        _edge("side", "T", "S", 1, side_speed, priority=1, shape=_shape(side), **kw),
        _edge("-side", "S", "T", 1, side_speed, priority=1, shape=_shape(reversed(side)), **kw),
    ]
    return PlainNetwork(
        nodes=_xml("nodes", nodes),
        edges=_xml("edges", edges),
        options=("--no-turnarounds.except-deadend", "true"),
    )


PROCEDURAL_MAPS: dict[str, ProceduralMap] = {
    "urban_grid": ProceduralMap(
        "grid of two-way 50 km/h streets with sidewalks, crossings, traffic lights and stop signs", urban_grid
    ),
    "highway": ProceduralMap(
        "~2 km three-lane 120 km/h motorway with an on-ramp merge, an exit ramp and the opposite carriageway",
        highway,
    ),
    "rural": ProceduralMap("~2 km curvy two-lane two-way 70 km/h road with a priority T-junction", rural),
}


def build_procedural(name: str, cache_dir: str | os.PathLike | None = None, **params: object) -> Path:
    """Generate procedural map `name` (see `PROCEDURAL_MAPS`) with `params`; returns the cached `.net.xml`."""
    spec = PROCEDURAL_MAPS.get(name)
    if spec is None:
        raise MapError(f"unknown procedural map {name!r}; valid names: {', '.join(sorted(PROCEDURAL_MAPS))}")
    try:
        inspect.signature(spec.generate).bind(**params)
    except TypeError as exc:
        valid = ", ".join(inspect.signature(spec.generate).parameters)
        raise MapError(f"bad parameters for procedural map {name!r}: {exc} (valid: {valid})") from None
    plain = spec(**params)
    options = [*_PLAIN_OPTIONS, *plain.options]
    key = {
        "kind": "procedural",
        "name": name,
        "params": params,
        "xml": hashlib.sha256((plain.nodes + plain.edges + plain.connections).encode()).hexdigest(),
        "options": options,
    }

    def make_args(tmp: Path) -> list[str]:
        (tmp / "map.nod.xml").write_text(plain.nodes, encoding="utf-8")
        (tmp / "map.edg.xml").write_text(plain.edges, encoding="utf-8")
        args = ["--node-files", str(tmp / "map.nod.xml"), "--edge-files", str(tmp / "map.edg.xml")]
        if plain.connections:
            (tmp / "map.con.xml").write_text(plain.connections, encoding="utf-8")
            args += ["--connection-files", str(tmp / "map.con.xml")]
        return args + options

    return _netconvert_cached(name, key, cache_dir, make_args, f"procedural map {name!r}")


# -------------------------------------------------------------------------------------------------
# Map specs


def maps_dir() -> Path:
    """Where CARLA town `.xodr` files are looked up: $TAKEOVER_MAPS_DIR, else ../shared/data/carla/maps."""
    env = os.environ.get("TAKEOVER_MAPS_DIR")
    return Path(env).expanduser() if env else DEFAULT_MAPS_DIR


_TOWN_RE = re.compile(r"Town\d{2}\w*")


def resolve_map(spec: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A SUMO net for `spec`: a procedural map name, a CARLA town name (e.g. "Town04", looked up in
    `maps_dir()`), a path to an `.xodr` (converted, cached) or a path to a ready `.net.xml` (as is)."""
    spec = str(spec)
    if spec in PROCEDURAL_MAPS:
        return build_procedural(spec, cache_dir)
    if _TOWN_RE.fullmatch(spec):
        xodr = maps_dir() / f"{spec}.xodr"
        if not xodr.is_file():
            raise MapError(
                f"CARLA town {spec!r}: {xodr} not found "
                f"(set TAKEOVER_MAPS_DIR to the folder holding {spec}.xodr)"
            )
        return convert_opendrive(xodr, cache_dir)
    path = Path(spec).expanduser()
    name = path.name.lower()
    if name.endswith(".xodr"):
        return convert_opendrive(path, cache_dir)
    if name.endswith((".net.xml", ".net.xml.gz")):
        if not path.is_file():
            raise MapError(f"SUMO network file not found: {path}")
        return path
    if path.exists():
        raise MapError(f"unsupported map file {path}: expected an .xodr or a .net.xml")
    raise MapError(
        f"unknown map {spec!r}: not a procedural map ({', '.join(sorted(PROCEDURAL_MAPS))}), "
        "not a CARLA town name (TownNN) and not an existing .xodr/.net.xml file"
    )
