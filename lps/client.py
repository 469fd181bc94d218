"""The robot computer's side of `lps serve`: one file needing only numpy, msgpack and websockets
(no JAX), to copy onto the robot; see docs/serving.md and docs/fine-tuning-on-a-robot.md.

    with PolicyClient("ws://192.168.1.10:8000", token=T) as policy:
        chunk = policy.act(obs)                 # (H, action_dim) float32; obs: array or dict of arrays
        with policy.episode() as ep:            # `lps serve --learn`: record and send an episode
            chunk = ep.act(obs); ep.record(obs, action, intervention=False); ep.finish(success=True)

Messages are msgpack maps with openpi's numpy layout (msgpack-numpy's is read too). Every request
survives a dropped connection: bounded retries with exponential backoff (`retries`, `backoff_s`).
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, Callable

import msgpack
import numpy as np

# numpy dtype kinds an array may have on the wire: bool, signed/unsigned integers, floats. Object,
# void and string dtypes could make a decoder build arbitrary Python objects, so they are refused.
WIRE_KINDS = "biuf"


class ProtocolError(ValueError):
    """A message that is not valid msgpack, or holds an array that cannot be decoded."""


class PolicyServerError(RuntimeError):
    """The server answered a request with an error reply."""


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in WIRE_KINDS:
            raise TypeError(f"cannot send a numpy array of dtype {obj.dtype}; use bool, integer or float arrays")
        obj = np.ascontiguousarray(obj)
        return {"__ndarray__": True, "data": obj.tobytes(), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):  # a numpy scalar
        return obj.item()
    raise TypeError(f"cannot send an object of type {type(obj).__name__}; send numbers, strings, arrays or dicts")


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _decode_hook(obj: dict) -> Any:
    # Keys may arrive as str (our encoder, msgpack with raw=False) or bytes (encoders that pack bytes keys).
    fields = {_text(k): v for k, v in obj.items()}
    if fields.get("__ndarray__") is True:
        data, dtype, shape = fields.get("data"), fields.get("dtype"), fields.get("shape")
    elif fields.get("nd") is True:  # msgpack-numpy's layout
        data, dtype, shape = fields.get("data"), fields.get("type"), fields.get("shape")
    else:
        return fields
    # Integers only: tuple(int(n) for n in "28") would read the string "28" as the shape (2, 8).
    if not isinstance(shape, (list, tuple)) or not all(type(n) is int for n in shape):
        raise ProtocolError(f"array with shape {shape!r}: a shape must be a list of integers, e.g. [28]")
    shape = tuple(shape)
    try:
        dtype = np.dtype(_text(dtype))
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"array with an unreadable dtype {dtype!r}") from e
    if dtype.kind not in WIRE_KINDS:
        raise ProtocolError(f"array dtype {dtype} is not allowed; send bool, integer or float arrays")
    if any(n < 0 for n in shape) or not isinstance(data, bytes):
        raise ProtocolError(f"array with shape {shape} and {type(data).__name__} data is malformed")
    if len(data) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
        raise ProtocolError(f"array of shape {shape} and dtype {dtype} needs {dtype.itemsize * int(np.prod(shape))} "
                            f"bytes but carries {len(data)}")  # fmt: skip
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def pack(message: dict) -> bytes:
    """A message (nested dicts, lists, numbers, strings, numpy arrays) as msgpack bytes."""
    return msgpack.packb(message, default=_encode_default, use_bin_type=True)


def unpack(payload: bytes) -> Any:
    """The message in msgpack bytes, numpy arrays restored (read-only views of the payload)."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"expected a binary msgpack message, got {type(payload).__name__}")
    try:
        return msgpack.unpackb(payload, object_hook=_decode_hook, raw=False, strict_map_key=False)
    except ProtocolError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as e:  # ExtraData, FormatError, StackError ...
        raise ProtocolError(f"undecodable message ({type(e).__name__}: {e}); send one msgpack map per frame") from e


class PolicyClient:
    """A connection to `lps serve`. Not thread-safe: give each thread its own client.

    Every request survives a dropped connection: when the server closes it, or gives no reply
    within `timeout` seconds, the client opens a new connection and sends the request again, up to
    `retries` times, waiting `backoff_s`, then twice as long each time (at most `max_backoff_s`)
    before each attempt; then it raises ConnectionError. A reply is only ever read on the
    connection its request went out on, so a late reply on an abandoned connection is never taken
    for the answer to a later request. `log` (e.g. `print`) is told about every reconnect; the
    default logs nothing. The first connection (made here) is tried once: a wrong address fails at
    once. `connections` counts the connections opened so far."""

    def __init__(self, url: str, timeout: float = 60.0, max_message_mb: float = 64.0, token: str | None = None,
                 retries: int = 5, backoff_s: float = 0.2, max_backoff_s: float = 5.0,
                 log: Callable[[str], None] | None = None):  # fmt: skip
        if retries < 0 or backoff_s < 0 or max_backoff_s < 0:
            raise ValueError(f"retries, backoff_s and max_backoff_s must be >= 0, got {retries}, {backoff_s}, "
                             f"{max_backoff_s}")  # fmt: skip
        self.url, self.timeout, self.max_message_mb = url, timeout, max_message_mb
        self.token = token if token is not None else os.environ.get("LPS_TOKEN")  # sent with episodes only
        self.retries, self.backoff_s, self.max_backoff_s, self.log = retries, backoff_s, max_backoff_s, log
        self.last_latency_ms: float | None = None  # the server's time for the last chunk
        self.last_round_trip_ms: float | None = None  # the client's, network and (de)coding included
        self.last_policy_version: int | None = None  # the weights the last reply came from
        self._ws = self._connect()
        self.connections = 1
        self._spec: dict | None = None
        # (episode id, connection number) of the last chunk served: the server holds that episode's
        # frame stack on that connection only (a new connection starts with none).
        self._stack_of: tuple[Any, int] | None = None

    def _connect(self):
        from websockets.exceptions import InvalidURI, WebSocketException
        from websockets.sync.client import connect

        try:
            # Entering the connection is what `with connect(...)` does; the client's own close() and
            # context manager end it (websockets >= 17.1 warns about connections never entered).
            return connect(self.url, open_timeout=self.timeout, max_size=int(self.max_message_mb * 2**20)).__enter__()
        except InvalidURI as e:
            raise ValueError(
                f"{self.url!r} is not a websocket address ({e}); give ws://HOST:PORT, as `lps serve` prints it"
            ) from None
        except (OSError, TimeoutError, WebSocketException) as e:  # e.g. an HTTP server that is not lps serve
            raise ConnectionError(
                f"cannot reach the policy server at {self.url} ({e}); is `lps serve` running there?"
            ) from e

    def _reconnect(self) -> None:
        """Abandon the current connection (its replies are never read) and open a new one."""
        try:
            self._ws.close_timeout = min(1.0, self.timeout)  # a hung peer need not answer the close
            self._ws.close()
        except Exception:  # noqa: BLE001 - the old connection is gone either way
            pass
        self._ws = self._connect()
        self.connections += 1

    def _exchange(self, message: dict) -> dict:
        """One request and its reply on the current connection: ConnectionError when the
        connection is closed, TimeoutError without a reply in time, no retry."""
        from websockets.exceptions import ConnectionClosed

        payload = pack(message)
        try:
            self._ws.send(payload)
            reply = unpack(self._ws.recv(timeout=self.timeout))
        except ConnectionClosed as e:
            raise ConnectionError(f"the policy server at {self.url} closed the connection ({e})") from e
        except TimeoutError as e:
            raise TimeoutError(f"no reply from the policy server at {self.url} within {self.timeout} s") from e
        except OSError as e:  # the socket failed under the connection (reset, broken pipe)
            raise ConnectionError(f"the connection to the policy server at {self.url} failed ({e})") from e
        if not isinstance(reply, dict):
            raise ProtocolError(f"the server sent a {type(reply).__name__}, not a map")
        if "error" in reply:
            raise PolicyServerError(f"policy server at {self.url}: {reply['error']}")
        self.last_policy_version = reply.get("policy_version", self.last_policy_version)
        return reply

    def _request(self, message: dict | Callable[[], dict], retries: int | None = None,
                 backoff_s: float | None = None) -> dict:  # fmt: skip
        """The reply to `message` (or to the message `message()` builds for the connection it goes
        out on), reconnecting and resending after a closed connection or a missing reply; after
        `retries` failed reconnects, ConnectionError. Error replies are raised, never retried."""
        retries = self.retries if retries is None else retries
        backoff_s = self.backoff_s if backoff_s is None else backoff_s
        dropped, last, since = None, None, None
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(min(backoff_s * 2 ** (attempt - 1), self.max_backoff_s))
                try:
                    self._reconnect()
                except ConnectionError as e:
                    last = e
                    continue  # the server may be restarting: try again after the next wait
                if self.log is not None:
                    self.log(f"[lps client] reconnected to {self.url} after {attempt} attempt(s) "
                             f"({time.monotonic() - since:.1f} s)")  # fmt: skip
            try:
                return self._exchange(message() if callable(message) else message)
            except (ConnectionError, TimeoutError) as e:
                last = e
                if dropped is None:
                    dropped, since = e, time.monotonic()
                    if self.log is not None and retries:
                        self.log(f"[lps client] {e}; reconnecting")
        seconds = time.monotonic() - since
        raise ConnectionError(
            f"{dropped}, and {retries} attempt(s) to reconnect and resend over {seconds:.1f} s failed (last: {last}); "
            f"check that `lps serve` is still running at {self.url} and that the network to it is up"
        ) from last

    def spec(self) -> dict:
        """What the server expects and returns: `observation` (shapes and dtypes), `chunk_len`, `action_dim`."""
        if self._spec is None:
            self._spec = self._request({"type": "spec"})
        return self._spec

    def act(self, obs, frames: list | None = None, episode: str | None = None,
            history: list | None = None) -> np.ndarray:  # fmt: skip
        """The action chunk (H, action_dim) for one observation ((B, H, A) for a batch of state vectors).
        For a `--frame-stack` policy: `episode`, an id that changes when a new episode starts, and
        `frames`, the observations of the steps executed since the last call (`Episode.act` sends
        both itself). `history`, the episode's last K-1 executed steps' observations before `obs`,
        is sent as the frames instead whenever the connection holds no frames of this episode
        (a first chunk, or after a reconnect): without it a reconnect restarts the stack from `obs`."""
        start = time.perf_counter()

        def message() -> dict:
            built = {"obs": obs}
            earlier = frames
            if episode is not None:
                built["episode"] = episode
                if history is not None and self._stack_of != (episode, self.connections):
                    earlier = history
            if earlier:
                built["frames"] = list(earlier)
            return built

        try:
            reply = self._request(message)
        except BaseException:
            self._stack_of = None  # unknown: a failed request may have reset the connection's stack
            raise
        self._stack_of = (episode, self.connections)
        self.last_round_trip_ms = 1e3 * (time.perf_counter() - start)
        self.last_latency_ms = reply.get("latency_ms")
        if "action" not in reply:
            raise ProtocolError(f"the server's reply has no 'action' (keys {sorted(reply)})")
        return np.asarray(reply["action"], np.float32)

    def wait_for_learner(self, timeout: float = 3600.0, poll_s: float = 0.2) -> dict:
        """Block until a `--learn` server has trained on every episode it received (its spec's
        `learning.queued` is 0 and it is not training), as an operator waits between rollouts while
        the updates run; returns the `learning` block. TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            learning = self._request({"type": "spec"}).get("learning")
            if not isinstance(learning, dict):
                raise ProtocolError(f"the server at {self.url} does not learn (start it with `lps serve RUN --learn`)")
            if learning.get("queued", 0) == 0 and not learning.get("training", False):
                return learning
            if time.monotonic() > deadline:
                raise TimeoutError(f"the learner at {self.url} still had {learning.get('queued')} episode(s) queued "
                                   f"after {timeout} s")  # fmt: skip
            time.sleep(poll_s)

    def episode(self) -> Episode:
        """A recorder for one episode, sent to a `--learn` server when it finishes (see module docs)."""
        return Episode(self)

    def send_episode(self, message: dict, retries: int | None = None, backoff_s: float | None = None) -> dict:
        """Send one episode message; on a dropped connection reconnect and send it again (the
        server stores an episode id once, so a resend after a lost reply is no duplicate).
        `retries` and `backoff_s` default to the client's."""
        message = {**message, "type": "episode", "token": self.token or ""}
        return self._request(message, retries, backoff_s)

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Episode:
    """One episode's steps as the robot executed them; `finish` sends it (see the module docs).
    Leaving the `with` block without `finish` (an exception, an emergency stop) sends it as
    aborted: stored by the server, never trained on."""

    def __init__(self, client: PolicyClient, episode_id: str | None = None):
        self.client = client
        self.id = episode_id or uuid.uuid4().hex
        self.observations: list[Any] = []
        self.actions: list[np.ndarray] = []
        self.interventions: list[bool] = []
        self.reply: dict | None = None
        self._acted_at: int | None = None  # recorded steps when the last chunk was asked for

    def act(self, obs) -> np.ndarray:
        """The served chunk for `obs` (record the steps you execute from it with `record`). A
        `--frame-stack` policy is also sent this episode's id and the steps recorded since the
        last call, so it stacks consecutive frames as in training."""
        stack = int(self.client.spec().get("frame_stack", 1))
        if stack <= 1:
            return self.client.act(obs)
        # The recorded steps after the one the last chunk was asked for (that one is already stacked).
        since = self.observations[self._acted_at + 1 :] if self._acted_at is not None else []
        self._acted_at = len(self.observations)
        if isinstance(self.client, PolicyClient):
            # On a connection that holds no frames of this episode (after a reconnect) the client
            # sends the last K-1 recorded steps instead, so the stack is the one training builds.
            history = self.observations[-(stack - 1) :]
            return self.client.act(obs, frames=since[-(stack - 1) :], episode=self.id, history=history)
        return self.client.act(obs, frames=since[-(stack - 1) :], episode=self.id)

    def record(self, obs, action, intervention: bool = False) -> None:
        """One executed step: the observation it started from and the action actually executed
        (the operator's, with `intervention=True`, when a human took over)."""
        self.observations.append(obs)
        self.actions.append(np.asarray(action, np.float32).reshape(-1))
        self.interventions.append(bool(intervention))

    def message(self, outcome: str) -> dict:
        if not self.actions:
            raise ValueError("the episode has no recorded steps; call record(obs, action) for each executed step")
        first = self.observations[0]
        if isinstance(first, dict):
            obs = {k: np.stack([np.asarray(o[k]) for o in self.observations]) for k in first}
        else:
            obs = np.stack([np.asarray(o) for o in self.observations])
        return {"id": self.id, "outcome": outcome, "observations": obs, "actions": np.stack(self.actions),
                "interventions": np.asarray(self.interventions, bool)}  # fmt: skip

    def finish(self, success: bool | None = None, outcome: str | None = None) -> dict:
        """Send the episode with its outcome (`success=True/False`, or outcome="aborted"); the
        server's acknowledgement. Raises PolicyServerError if the server refused it."""
        if self.reply is not None:
            return self.reply
        if outcome is None:
            if success is None:
                raise ValueError("finish(success=True/False) or finish(outcome='aborted')")
            outcome = "success" if success else "failure"
        self.reply = self.client.send_episode(self.message(outcome))
        return self.reply

    def __enter__(self) -> Episode:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.reply is None and self.actions:
            try:
                self.finish(outcome="aborted")
            except Exception:  # noqa: BLE001 - never hide the exception that ended the episode
                if exc_type is None:
                    raise
