"""`lps serve RUN`: a policy server that a robot computer calls over websockets; see docs/serving.md.

    lps serve runs/my-robot/lps/seed0 --host 0.0.0.0 --port 8000 [--device auto|cpu|gpu]

`PolicyServer` answers msgpack requests (wire format and client in `lps.client`), one thread per
connection and one lock around the policy call; malformed requests get `{"error": ...}` and the
connection stays open. Batch sizes up to `--max-batch` are compiled at start-up; `GET /health`
answers the spec. No authentication for acting: bind to 127.0.0.1 or a trusted network. `--learn`
adds fine-tuning (`lps.deploy.learner`, needs `--token`); `--protocol openpi` speaks openpi's
protocol (`lps.deploy.openpi`). Every reply carries `policy_version`.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import threading
import time
import traceback
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from lps.client import ProtocolError, pack, unpack
from lps.deploy import openpi
from lps.deploy.messages import ActRefused, plain
from lps.deploy.openpi import ObsMap

if TYPE_CHECKING:
    from lps.deploy.learner import LearnerConfig

HEALTH_PATHS = ("/health", "/healthz")
PROTOCOLS = ("lps", "openpi")  # lps.client's requests and replies; openpi-client's (lps.deploy.openpi)
DEFAULT_MAX_BATCH = 256  # observations per request: bounds the programs a client can make the server compile


# --- observations ---------------------------------------------------------------------------


def observation_spec(policy) -> dict:
    """The observation the policy takes: {"shape", "dtype"} for one array, or a dict of those
    (nested) for dict observations. A policy that knows better exposes `observation_spec()`."""
    custom = getattr(policy, "observation_spec", None)
    if callable(custom):
        return custom()
    spec = policy.spec
    image_shape = getattr(spec, "image_shape", None)
    state = {"shape": [int(spec.obs_dim)], "dtype": "float32"}
    if getattr(spec, "cameras", ()):  # robot cameras by name, each at its own size
        return {"state": state, "image": {name: {"shape": list(shape), "dtype": "uint8"} for name, shape in spec.cameras}}
    if image_shape is None:
        return state
    image = {"shape": [int(d) for d in image_shape], "dtype": "uint8"}
    return image if spec.obs_dim == 0 else {"state": state, "image": image}


def _is_array_spec(spec: Any) -> bool:
    return isinstance(spec, dict) and "shape" in spec and not isinstance(spec["shape"], dict)


def spec_shape(spec: dict, where: str = "obs") -> tuple[int, ...]:
    """An array spec's shape, refusing anything but a list of non-negative integers (a string
    "28" would otherwise read as (2, 8))."""
    shape = spec["shape"]
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise ValueError(f"the observation spec of '{where}': its shape must be a list of non-negative integers, "
                         f"got {shape!r}")  # fmt: skip
    return tuple(int(n) for n in shape)


def check_spec(spec: Any, where: str = "obs") -> None:
    """Refuse an observation spec whose shapes are not lists of integers, naming the entry."""
    if _is_array_spec(spec):
        spec_shape(spec, where)
    elif isinstance(spec, dict):
        for key, sub in spec.items():
            check_spec(sub, f"{where}.{key}")


def example_observation(spec: dict) -> Any:
    """Zeros shaped like the spec (to compile the policy before the first request)."""
    if _is_array_spec(spec):
        return np.zeros(spec["shape"], spec.get("dtype", "float32"))
    return {key: example_observation(sub) for key, sub in spec.items()}


def example_batch(spec: dict, size: int) -> Any:
    """Zeros shaped like a batch of `size` observations of the spec."""
    if _is_array_spec(spec):
        return np.zeros([size, *spec["shape"]], spec.get("dtype", "float32"))
    return {key: example_batch(sub, size) for key, sub in spec.items()}


def request_batch_size(obs: Any, spec: dict) -> int:
    """Observations in a request that passed `check_observation`: 1, or the leading axis of a batch
    (of the array, or of a dict's 'state')."""
    if _is_array_spec(spec):
        arr = np.asarray(obs)
        return len(arr) if arr.ndim == len(spec["shape"]) + 1 else 1
    state, state_spec = (obs.get("state"), spec.get("state")) if isinstance(obs, dict) else (None, None)
    if _is_array_spec(state_spec) and state is not None and np.ndim(state) == len(state_spec["shape"]) + 1:
        return len(state)
    return 1


def check_observation(obs: Any, spec: dict, where: str = "obs") -> None:
    """Refuse what no policy can act on, naming what was wrong: non-numeric leaves, NaN/inf, and,
    for a single-array spec, the wrong shape. A dict observation's keys are the policy's to check
    (it may accept a raw robot dict as well as its own)."""
    if isinstance(obs, dict):
        if _is_array_spec(spec):
            raise ValueError(f"'{where}' must be an array of shape {spec['shape']}, got a dict with keys {sorted(map(str, obs))}")
        if not obs:
            raise ValueError(f"'{where}' is an empty dict")
        for key, value in obs.items():
            check_observation(value, {}, f"{where}.{key}")
        return
    arr = obs if isinstance(obs, np.ndarray) else None
    if arr is None:
        try:
            arr = np.asarray(obs)
        except (ValueError, TypeError) as e:
            raise ValueError(f"'{where}' is not an array ({type(obs).__name__}: {e})") from e
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"'{where}' must hold numbers, got {type(obs).__name__} of dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"'{where}' holds {int(np.sum(~np.isfinite(arr)))} NaN/inf value(s)")
    if _is_array_spec(spec):
        shape = spec_shape(spec, where)
        if spec.get("dtype") == "uint8" and arr.dtype != np.uint8:
            raise ValueError(f"'{where}' must be a uint8 image array, got {arr.dtype}")
        if spec.get("dtype", "float32").startswith("float") and arr.dtype.kind == "b":
            raise ValueError(f"'{where}' must hold numbers ({spec.get('dtype', 'float32')}), got booleans")
        if arr.shape != shape and not (arr.ndim == len(shape) + 1 and arr.shape[1:] == shape and len(arr)):
            raise ValueError(
                f"'{where}' must have shape {list(shape)} (or [batch, *{list(shape)}]), got {list(arr.shape)}"
            )


# --- latency log ------------------------------------------------------------------------------


class LatencyLog:
    """Per-request latencies; `every(seconds)` prints a summary line per interval that saw traffic
    (from its own thread, so the request path only appends a number)."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self._lock = threading.Lock()
        self._window: list[float] = []
        self._window_errors = 0
        self._all: list[float] = []
        self._total_errors = 0
        self._window_start = time.monotonic()

    def record(self, latency_ms: float | None) -> None:
        """One chunk served in `latency_ms`, or one error reply (None)."""
        with self._lock:
            if latency_ms is None:
                self._window_errors += 1
                self._total_errors += 1
            else:
                self._window.append(latency_ms)
                self._all.append(latency_ms)

    def flush_window(self) -> str | None:
        """Log (and return) the summary of the requests since the last flush, if there were any."""
        with self._lock:
            now = time.monotonic()
            window, errors, seconds = self._window, self._window_errors, now - self._window_start
            self._window, self._window_errors, self._window_start = [], 0, now
        if not window and not errors:
            return None
        line = _summary(f"last {seconds:.0f} s", window, errors)
        self.log(line)
        return line

    def every(self, seconds: float) -> threading.Event:
        """Flush every `seconds` in a daemon thread until the returned event is set."""
        stop = threading.Event()

        def tick():
            while not stop.wait(seconds):
                self.flush_window()

        threading.Thread(target=tick, name="lps-serve-latency-log", daemon=True).start()
        return stop

    def final(self) -> str:
        with self._lock:
            return _summary("in total", self._all, self._total_errors)

    def percentiles(self) -> dict[str, float]:
        with self._lock:
            lat = np.asarray(self._all)
        if not len(lat):
            return {}
        return {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)), "count": len(lat)}


def _summary(label: str, latencies: list[float], errors: int) -> str:
    text = f"[lps serve] {label}: {len(latencies)} chunks"
    if latencies:
        p50, p99 = np.percentile(latencies, [50, 99])
        text += f", latency p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(latencies):.2f} ms"
    return text + f", {errors} error replies"


# --- the server -------------------------------------------------------------------------------


class EpisodeFrames:
    """A connection's frame stack (`--frame-stack` policies) and the episode it belongs to: a
    request naming another `episode` than the last one starts a new stack."""

    def __init__(self, frames):
        self.frames, self.episode = frames, None

    def frames_for(self, episode):
        if episode != self.episode:
            self.frames.reset()
            self.episode = episode
        return self.frames


class PolicyServer:
    """Answers spec and action requests for one policy (see the module docstring for the protocol).

    `respond(payload, step)` turns one request's bytes into the reply's bytes and is what every
    connection thread calls; the network part is `start`."""

    def __init__(self, policy, info: dict | None = None, log_every_s: float = 10.0, log=print,
                 max_batch: int = DEFAULT_MAX_BATCH):  # fmt: skip
        if max_batch < 1:
            raise ValueError(f"--max-batch must be at least 1, got {max_batch}")
        self.policy = policy
        self.obs_spec = observation_spec(policy)
        check_spec(self.obs_spec)
        self.max_batch = max_batch
        if hasattr(policy, "max_batch"):
            policy.max_batch = max_batch
        # Batch sizes whose program is compiled (a Policy pads a batch to a power of two); a new one
        # is compiled under its own lock, outside the policy lock, so other clients keep being served.
        self._compiled_buckets = {1}
        self._compile_lock = threading.Lock()
        self.log, self.log_every_s = log, log_every_s
        self.latency = LatencyLog(log)
        self._policy_lock = threading.Lock()
        # Bumped by every weight swap (`swap_params`); every reply names the weights it came from.
        self.policy_version = 0
        self.learner = None  # an lps.deploy.learner.Learner when serving with --learn
        self.frame_stack = int(getattr(policy.spec, "frame_stack", 1))
        self.spec_message = {
            "type": "spec",
            "observation": self.obs_spec,
            "chunk_len": int(policy.spec.chunk_len),
            "action_dim": int(policy.spec.action_dim),
            "action_dtype": "float32",
            "problem": plain(dataclasses.asdict(policy.spec)),
            # > 1: the server keeps each connection's last K frames per episode (see "frames" requests)
            "frame_stack": int(getattr(policy.spec, "frame_stack", 1)),
            **_robot_data(policy),
            **(info or {}),
        }

    def warm_up(self) -> None:
        """Compile the acting function now rather than on the first robot request."""
        import jax

        # An explicit key leaves the policy's own call counter (its noise sequence) untouched; fold_in
        # is how the policy derives its keys, and it too compiles on first use (~0.3 s on a busy CPU).
        key = jax.random.fold_in(jax.random.PRNGKey(0), 0)
        with self._policy_lock:
            self._compile_call(example_observation(self.obs_spec), key)

    def new_session(self) -> EpisodeFrames | None:
        """One connection's frame stack (None when the policy stacks no frames)."""
        new_frames = getattr(self.policy, "new_frames", None)
        frames = new_frames() if callable(new_frames) else None
        return EpisodeFrames(frames) if frames is not None else None

    def respond(self, payload: bytes | str, step: int, session: EpisodeFrames | None = None) -> tuple[bytes, bool]:
        """(reply bytes, whether a chunk was served) for one request; never raises for bad input.
        `session`: the connection's frames (a frame-stacked policy; None: a fresh stack per request)."""
        start = time.perf_counter()
        try:
            request = unpack(payload)
            if not isinstance(request, dict):
                raise ProtocolError(f"a request is a msgpack map, got {type(request).__name__}")
            kind = request.get("type", "act" if "obs" in request else None)
            if kind == "spec":
                return pack(self.spec_reply()), False
            if kind == "episode":
                if self.learner is None:
                    raise ProtocolError("this server does not learn from episodes; start it with `lps serve RUN --learn`")
                return pack({**self.learner.receive(request), "policy_version": self.policy_version}), False
            if kind != "act" or "obs" not in request:
                raise ProtocolError(
                    f"unknown request with keys {sorted(map(str, request))}: send {{'obs': observation}} for an "
                    "action chunk or {'type': 'spec'} for the expected observation"
                )
            obs = request["obs"]
            earlier = request.get("frames", [])
            if not isinstance(earlier, list):
                raise ProtocolError("'frames' is a list of observations (the steps since the last request), "
                                    f"got {type(earlier).__name__}")  # fmt: skip
            size = self.checked_size(obs, earlier)
        except (ValueError, TypeError, KeyError, RecursionError) as e:  # ProtocolError is a ValueError
            return self._error(f"bad request: {e}"), False
        try:
            chunk, version = self.act(obs, size, session, earlier, request.get("episode"))
        except ActRefused as e:
            return self._error(str(e)), False
        latency_ms = 1e3 * (time.perf_counter() - start)
        self.latency.record(latency_ms)
        return pack({"action": chunk, "latency_ms": latency_ms, "step": step, "policy_version": version}), True

    def spec_reply(self) -> dict:
        """What a `spec` request (and openpi's metadata frame) answers: the spec, the learner's
        state with `--learn`, and the policy version now served."""
        learning = {"learning": self.learner.status()} if self.learner is not None else {}
        return {**self.spec_message, **learning, "policy_version": self.policy_version}

    def checked_size(self, obs: Any, earlier: list = (), where: str = "obs") -> int:
        """The number of observations in `obs` (1 or a batch), after refusing what no policy can act
        on (see `check_observation`) and batches above --max-batch: a ValueError naming the problem."""
        check_observation(obs, self.obs_spec, where)
        for i, frame in enumerate(earlier):
            check_observation(frame, self.obs_spec, where=f"frames[{i}]")
        size = request_batch_size(obs, self.obs_spec)
        if size > self.max_batch:
            raise ValueError(
                f"a batch of {size} observations is larger than this server's --max-batch {self.max_batch}: "
                f"send at most {self.max_batch} per request"
            )
        return size

    def act(self, obs: Any, size: int, session: EpisodeFrames | None = None, earlier: list = (),
            episode: Any = None) -> tuple[np.ndarray, int]:  # fmt: skip
        """(chunk as float32, policy version) for an observation that passed `checked_size`; every
        protocol acts through here. `ActRefused` carries the message for the client when the policy
        refuses the observation or fails on it (the failure's traceback goes to the server log)."""
        try:
            self._compile_bucket(size)
            with self._policy_lock:
                if session is None and self.frame_stack > 1:
                    session = self.new_session()  # a request on its own: its frames are all there is
                if session is None:
                    chunk = self.policy(obs)
                else:  # the connection's episode: its frames so far, then this request's
                    frames = session.frames_for(episode)
                    for frame in list(earlier)[-(self.frame_stack - 1):]:
                        self.policy.observe(frame, frames=frames)
                    chunk = self.policy(obs, frames=frames)
                return np.asarray(chunk, np.float32), self.policy_version
        except (ValueError, TypeError, KeyError) as e:
            raise ActRefused(f"observation rejected by the policy: {type(e).__name__}: {e}") from e
        except Exception as e:  # noqa: BLE001 - a robot must get an answer, and the server must live on
            self.log(f"[lps serve] policy call failed:\n{traceback.format_exc()}")
            raise ActRefused(f"the policy failed on this observation ({type(e).__name__}: {e})") from e

    def precompile(self) -> list[int]:
        """Compile the program of every batch bucket up to --max-batch (1, 2, 4, ...) now, so no
        request ever waits for, or competes with, a compile: a new size compiled while serving
        stalled other clients' single observations (p99 74 ms, max 158 ms on 2 cores)."""
        top = 1 << max(self.max_batch - 1, 0).bit_length()
        buckets = [1 << i for i in range(top.bit_length())]
        for bucket in buckets:
            self._compile_bucket(bucket)
        return buckets

    def _compile_bucket(self, size: int) -> None:
        """Compile the program of a new batch bucket without holding the policy lock (compiling takes
        from 0.1 s to seconds; other clients' requests go on meanwhile). At most log2(--max-batch) + 1
        programs exist, so no client can make the server compile without bound."""
        bucket = 1 << max(size - 1, 0).bit_length()
        if bucket in self._compiled_buckets:
            return
        import jax

        with self._compile_lock:
            if bucket not in self._compiled_buckets:
                key = jax.random.fold_in(jax.random.PRNGKey(0), 0)  # leaves the policy's noise sequence alone
                # At most --max-batch rows (a Policy refuses more); it pads them to the bucket itself.
                self._compile_call(example_batch(self.obs_spec, min(bucket, self.max_batch)), key)
                self._compiled_buckets.add(bucket)

    def _compile_call(self, obs, key) -> None:
        """One policy call to compile its program, on a throwaway frame stack (no episode's)."""
        session = self.new_session()
        if session is None:
            self.policy(obs, key=key)
        else:
            self.policy(obs, key=key, frames=session.frames)

    def swap_params(self, params) -> int:
        """Serve `params` from the next request on (waits for at most the policy call in flight)."""
        with self._policy_lock:
            self.policy.params = params
            self.policy_version += 1
            return self.policy_version

    def _error(self, message: str) -> bytes:
        self.latency.record(None)
        return pack({"error": message})

    def _handle_connection(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        served, session = 0, self.new_session()
        try:
            for payload in ws:
                reply, ok = self.respond(payload, served + 1, session)
                served += ok
                ws.send(reply)
        except ConnectionClosed:
            pass  # the client went away; its thread ends here

    def _health(self, connection, request):
        if request.path.split("?", 1)[0] in HEALTH_PATHS:
            body = {"status": "ok", **self.spec_message}
            if self.learner is not None:
                learning = self.learner.status()
                body["learning"] = learning
                if learning["state"].startswith("failed") or learning["last_problem"]:
                    body["status"] = "degraded"  # acting still works; the learner needs a look
            return connection.respond(HTTPStatus.OK, json.dumps(plain(body)) + "\n")
        return None  # go on with the websocket handshake

    def start(self, host: str = "127.0.0.1", port: int = 8000, max_message_mb: float = 64.0,
              protocol: str = "lps", obs_keys: list[tuple[str, str]] = ()):  # fmt: skip
        """A listening websockets server (port 0: any free port, see `.socket.getsockname()`); call
        `serve_forever()` on it (in a thread for tests) and `shutdown()` to stop it. `protocol`:
        "lps" (lps.client) or "openpi" (openpi-client's WebsocketClientPolicy, see lps.deploy.openpi;
        `obs_keys`: its (OPENPI_KEY, LPS_KEY) mappings)."""
        from websockets.sync.server import serve

        if protocol == "openpi":
            handler = openpi.connection_handler(self, obs_keys)
        elif protocol == "lps":
            if obs_keys:
                raise ValueError("--obs-key maps openpi's observation keys: it needs --protocol openpi")
            handler = self._handle_connection
        else:
            raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        try:
            return serve(
                handler, host, port, process_request=self._health,
                max_size=int(max_message_mb * 2**20), compression=None,
            )  # fmt: skip
        except OSError as e:
            raise RuntimeError(f"cannot listen on {host}:{port} ({e}); pick another --port or --host") from e


def _robot_data(policy) -> dict:
    """The settings robot episodes were read with (cameras, image size, keys), for replay clients."""
    robot = getattr(policy, "robot", None)
    return {"robot_data": plain(dataclasses.asdict(robot))} if dataclasses.is_dataclass(robot) else {}


# --- loading and running --------------------------------------------------------------------


def pick_device(name: str):
    import jax

    if name not in ("auto", "cpu", "gpu"):
        raise ValueError(f"--device must be auto, cpu or gpu, not {name!r}")
    try:
        return jax.devices()[0] if name == "auto" else jax.devices(name)[0]
    except RuntimeError as e:
        hint = "install JAX with CUDA (pip install 'jax[cuda12]')" if name == "gpu" else "check $JAX_PLATFORMS"
        raise RuntimeError(f"--device {name}: JAX has no such device ({e}); {hint} or use --device auto") from e


def load_server(run_dir: str | Path, device: str = "auto", seed: int = 0, log_every_s: float = 10.0, log=print,
                max_batch: int = DEFAULT_MAX_BATCH, weights: str = "latest", precompile: bool = True):  # fmt: skip
    """The run's policy on the chosen device, compiled, wrapped in a PolicyServer. `precompile`:
    the program of every batch size up to `max_batch` too (else each is compiled on first use)."""
    import jax

    from lps.deploy.policy import load_policy
    from lps.training.config import load_config

    dev = pick_device(device)
    agent_name = load_config(run_dir)[0]
    with jax.default_device(dev):
        policy = load_policy(run_dir, seed, weights=weights)
    policy.params = jax.device_put(policy.params, dev)  # committed: every call runs on `dev`
    info = {"agent": agent_name, "run": str(run_dir), "device": str(dev)}
    server = PolicyServer(policy, info, log_every_s, log, max_batch)
    start = time.perf_counter()
    server.warm_up()
    sizes = "batch size 1"
    if precompile and max_batch > 1:
        log(f"[lps serve] compiling the policy for batch sizes 1, 2, 4, ... up to --max-batch {max_batch} "
            "(--no-precompile: each on first use)")  # fmt: skip
        buckets = server.precompile()
        sizes = f"batch sizes {', '.join(map(str, buckets))}"
    log(f"[lps serve] {agent_name} policy from {run_dir} on {dev}, compiled in {time.perf_counter() - start:.1f} s "
        f"({sizes})")  # fmt: skip
    return server


def serve_forever(server: PolicyServer, host: str, port: int, max_message_mb: float = 64.0, protocol: str = "lps",
                  obs_keys: list[tuple[str, str]] = ()) -> None:  # fmt: skip
    """Serve until Ctrl-C or SIGTERM, then close every connection and print the latency summary."""
    ws_server = server.start(host, port, max_message_mb, protocol, obs_keys)
    bound = ws_server.socket.getsockname()
    server.log(
        f"[lps serve] listening on ws://{bound[0]}:{bound[1]} (health: http://{bound[0]}:{bound[1]}/health)"
        f"{' for openpi clients' if protocol == 'openpi' else ''}; Ctrl-C stops"
    )

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, stop)
    ticker = server.latency.every(server.log_every_s) if server.log_every_s > 0 else None
    try:
        with ws_server:  # leaving it shuts down: closes the listening socket and every connection
            ws_server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if ticker is not None:
            ticker.set()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        server.log(server.latency.final())
        server.log("[lps serve] stopped")


def _check_port_free(host: str, port: int) -> None:
    try:
        socket.create_server((host, port)).close()
    except OSError as e:
        raise RuntimeError(f"cannot listen on {host}:{port} ({e}); pick another --port or --host") from e


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "auto", *,
          weights: str = "latest", seed: int = 0, log_every_s: float = 10.0, max_message_mb: float = 64.0,
          max_batch: int = DEFAULT_MAX_BATCH, precompile: bool = True, protocol: str = "lps",
          obs_keys: list[tuple[str, str]] = (), learn: LearnerConfig | None = None, log=print) -> None:  # fmt: skip
    """`lps serve`: load the run's policy onto `device` and serve it on `host:port` until Ctrl-C or
    SIGTERM. `learn`: also fine-tune on the episodes robots send, on another device than the one
    acting when there is one (`lps.deploy.learner.spare_device`)."""
    if port:
        _check_port_free(host, port)  # before the slow part: loading and compiling the policy
    server = load_server(run_dir, device, seed, log_every_s, log=log, max_batch=max_batch, weights=weights,
                         precompile=precompile)  # fmt: skip
    if protocol == "openpi":
        ObsMap(server.obs_spec, obs_keys)  # a --obs-key naming none of the run's observation is refused now
    learner = None
    if learn is not None:
        from lps.deploy.learner import attach, spare_device

        device = spare_device(server.policy.device)
        shared = " (the acting device: updates and requests take turns)" if device == server.policy.device else ""
        log(f"[lps serve] the learner trains on {device}{shared}")
        learner = attach(server, run_dir, learn, log=log, fresh=weights == "offline", device=device)
        needed_mb = learner.episode_message_bytes() / 2**20
        if needed_mb > max_message_mb:  # every episode --max-steps admits must be deliverable
            log(f"[lps serve] --max-message-mb raised to {needed_mb:.0f}: an episode of --max-steps {learn.max_steps} "
                "steps can be that large")  # fmt: skip
            max_message_mb = needed_mb
    try:
        serve_forever(server, host, port, max_message_mb, protocol, obs_keys)
    finally:
        if learner is not None:
            learner.close()
