"""openpi's websocket protocol for `lps serve RUN --protocol openpi`: robot code written against
openpi-client's `WebsocketClientPolicy` acts with an lps run as it is; see docs/serving.md
("openpi clients").

On connect the server sends the run's spec (plus `openpi_observation`) as metadata; each frame
is an observation map answered `{"actions", "policy_version", "server_timing"}`, and an error is
a text frame, then the connection closes (code 1011). `ObsMap` maps openpi keys to the run's
(`--obs-key OPENPI_KEY=LPS_KEY`); the mapped observation goes through `PolicyServer.checked_size`
and `act`, exactly as lps's `{"obs": ...}`. With `--learn`, episode frames go to the learner.
"""

from __future__ import annotations

import time
import traceback
from typing import Any, Callable

import msgpack
import numpy as np

from lps.client import ProtocolError
from lps.deploy.messages import ActRefused, flatten, plain

PREFIX = "observation/"
ARRAY_KINDS = "biuf"  # numbers an observation may hold
TEXT_KINDS = "US"  # numpy strings: decoded (a prompt may come as one), never acted on
INTERNAL_ERROR = 1011  # the close code openpi's server ends a connection with after an error frame


# --- wire encoding ----------------------------------------------------------------------------


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in ARRAY_KINDS + TEXT_KINDS:
        raise TypeError(f"cannot send numpy values of dtype {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
                b"shape": list(obj.shape)}  # fmt: skip
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send an object of type {type(obj).__name__}")


def packb(message: Any) -> bytes:
    """`message` (maps, lists, numbers, strings, numpy arrays and scalars) in openpi's encoding."""
    return msgpack.packb(message, default=_encode, use_bin_type=True)


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _dtype(name: Any) -> np.dtype:
    try:
        dtype = np.dtype(_text(name))
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"an array with the unreadable dtype {name!r}") from e
    if dtype.kind not in ARRAY_KINDS + TEXT_KINDS:
        raise ProtocolError(f"arrays of dtype {dtype} are not accepted; send bool, integer or float arrays")
    return dtype


def _decode(obj: dict) -> Any:
    fields = {_text(k): v for k, v in obj.items()}
    if fields.get("__ndarray__") is True:
        dtype, data, shape = _dtype(fields.get("dtype")), fields.get("data"), fields.get("shape")
        try:
            shape = tuple(int(n) for n in shape)
        except (TypeError, ValueError) as e:
            raise ProtocolError(f"an array with the unreadable shape {shape!r}") from e
        if not isinstance(data, bytes) or any(n < 0 for n in shape):
            raise ProtocolError(f"a malformed array (shape {shape}, {type(data).__name__} data)")
        if len(data) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise ProtocolError(f"an array of shape {list(shape)} and dtype {dtype} carries {len(data)} bytes, "
                                f"not {dtype.itemsize * int(np.prod(shape))}")  # fmt: skip
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if fields.get("__npgeneric__") is True:
        dtype = _dtype(fields.get("dtype"))
        try:
            return dtype.type(fields.get("data"))
        except (TypeError, ValueError) as e:
            raise ProtocolError(f"a numpy scalar of dtype {dtype} holding {fields.get('data')!r}") from e
    return fields


def unpackb(payload: Any) -> Any:
    """One frame in openpi's encoding, arrays restored (read-only views of the frame)."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"expected a binary msgpack frame, got {type(payload).__name__}")
    try:
        return msgpack.unpackb(payload, object_hook=_decode, raw=False, strict_map_key=False)
    except ProtocolError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise ProtocolError(f"an undecodable frame ({type(e).__name__}: {e}); send one msgpack map per frame") from e


# --- observation keys -------------------------------------------------------------------------


def parse_obs_key(text: str) -> tuple[str, str]:
    """`OPENPI_KEY=LPS_KEY` as a pair (the argparse type of `--obs-key`)."""
    openpi_key, sep, lps_key = text.partition("=")
    if not sep or not openpi_key.strip() or not lps_key.strip():
        raise ValueError(f"--obs-key takes OPENPI_KEY=LPS_KEY (e.g. observation/joint_position=state), got {text!r}")
    return openpi_key.strip(), lps_key.strip().strip("/")


parse_obs_key.__name__ = "OPENPI_KEY=LPS_KEY"  # how argparse names the type in its error message


def _is_array_spec(spec: Any) -> bool:
    return isinstance(spec, dict) and "shape" in spec and not isinstance(spec["shape"], dict)


def _slots(spec: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict]]:
    """(path, array spec) of every array of an observation spec (path (): the observation is one array)."""
    if _is_array_spec(spec):
        return [(path, spec)]
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"an observation spec of arrays is needed, got {spec!r}")
    return [slot for key, sub in spec.items() for slot in _slots(sub, (*path, str(key)))]


def _slot_name(path: tuple[str, ...], spec: dict) -> str:
    if not path:  # a run whose observation is one array: a state vector or an image
        return "image" if spec.get("dtype") == "uint8" else "state"
    return "/".join(path)


def _describe(spec: dict) -> str:
    return f"{spec.get('dtype', 'float32')} {list(spec['shape'])}"


def _is_text(value: Any) -> bool:
    return isinstance(value, (str, bytes)) or (isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in TEXT_KINDS)


class ObsMap:
    """Which openpi keys make up each array of the run's observation, built from its spec
    (`lps.deploy.serve.observation_spec`) and the `--obs-key` pairs."""

    def __init__(self, obs_spec: dict, overrides: list[tuple[str, str]] = ()):
        self.root = _is_array_spec(obs_spec)
        self.slots = {_slot_name(path, spec): (path, spec) for path, spec in _slots(obs_spec)}
        # Defaults: observation/<last part of the path> (a camera by its own name), the full path
        # where two arrays end in the same name.
        last = [name.rsplit("/", 1)[-1] for name in self.slots]
        self.sources: dict[str, list[str]] = {
            name: [PREFIX + (short if last.count(short) == 1 else name)] for name, short in zip(self.slots, last)
        }
        given: dict[str, list[str]] = {}
        for openpi_key, lps_key in overrides:
            given.setdefault(self._resolve(lps_key), []).append(openpi_key)
        self.sources.update(given)
        seen: dict[str, str] = {}
        for name, keys in self.sources.items():
            for key in keys:
                if key in seen:
                    raise ValueError(f"--obs-key: the openpi key '{key}' is read for both '{seen[key]}' and '{name}'; "
                                     "give each its own key")  # fmt: skip
                seen[key] = name
        self.lps_key_of = seen  # openpi key -> the run's observation array it makes up

    def _resolve(self, lps_key: str) -> str:
        if lps_key in self.slots:
            return lps_key
        ends = [name for name in self.slots if name.rsplit("/", 1)[-1] == lps_key]  # a camera by its name
        under = [name for name in self.slots if name.startswith(lps_key + "/")]  # 'image': its one camera
        for found in (ends, under):
            if len(found) == 1:
                return found[0]
        raise ValueError(f"--obs-key: the run's observation has no '{lps_key}'; it has {', '.join(self.slots)}")

    def expected(self) -> str:
        """The keys the run takes, for messages: 'observation/state' (state, float32 [4]), ..."""
        parts = []
        for name, (_, spec) in self.slots.items():
            keys = " + ".join(f"'{k}'" for k in self.sources[name])
            parts.append(f"{keys} ({name}, {_describe(spec)})")
        return ", ".join(parts)

    def table(self) -> dict[str, str]:
        """openpi key -> lps key, for the metadata frame."""
        return dict(self.lps_key_of)

    def to_lps(self, obs: Any) -> Any:
        """The openpi observation map as the run's observation (its dict, or its one array), or a
        ValueError naming the key that is unknown or missing and what the run takes."""
        if not isinstance(obs, dict):
            raise ValueError(f"an observation is a map of named arrays, got {type(obs).__name__}; this run takes "
                             f"{self.expected()}")  # fmt: skip
        flat = flatten(obs)
        unknown = [k for k, v in flat.items() if k not in self.lps_key_of and not _is_text(v)]
        if unknown:
            raise ValueError(
                f"observation key(s) {', '.join(repr(k) for k in unknown)} are not ones this run takes; it takes "
                f"{self.expected()} (text such as 'prompt' is ignored; `lps serve --obs-key OPENPI_KEY=LPS_KEY` maps "
                "other names)"
            )
        missing = [k for keys in self.sources.values() for k in keys if k not in flat]
        if missing:
            raise ValueError(
                f"observation lacks {', '.join(repr(k) for k in missing)}; this run takes {self.expected()} "
                f"(keys sent: {', '.join(map(repr, flat)) or 'none'})"
            )
        lps_obs: dict = {}
        for name, (path, _) in self.slots.items():
            parts = [flat[k] for k in self.sources[name]]
            for key, part in zip(self.sources[name], parts):
                if _is_text(part) or isinstance(part, dict):
                    raise ValueError(f"observation '{key}' ({name}) must be an array of numbers, got "
                                     f"{type(part).__name__}")  # fmt: skip
            if len(parts) == 1:
                value = parts[0]
            else:
                try:
                    value = np.concatenate([np.atleast_1d(np.asarray(p)) for p in parts], axis=-1)
                except ValueError as e:
                    raise ValueError(f"observation {' + '.join(map(repr, self.sources[name]))} cannot be joined into "
                                     f"'{name}' ({e})") from None  # fmt: skip
            if not path:
                return value
            node = lps_obs
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
        return lps_obs

    def where(self) -> str:
        """How messages name the observation of a one-array run: its openpi key(s)."""
        name = next(iter(self.slots))
        return " + ".join(self.sources[name]) if self.root else "observation"


# --- the connection ---------------------------------------------------------------------------


def api_key(headers) -> str | None:
    """The key openpi-client sends (`Authorization: Api-Key KEY`), or an `Api-Key: KEY` header."""
    auth = headers.get("Authorization") or ""
    scheme, _, key = auth.strip().partition(" ")
    if scheme.lower() == "api-key" and key.strip():
        return key.strip()
    return (headers.get("Api-Key") or "").strip() or None


class Refused(Exception):
    """A frame that gets a text error frame and the connection closed."""


def answer(server, obs_map: ObsMap, payload: Any, session=None, key: str | None = None) -> dict:
    """The reply map to one frame of an openpi connection (`Refused` with the message otherwise)."""
    start = time.perf_counter()
    try:
        message = unpackb(payload)
        if isinstance(message, dict) and message.get("type") == "episode":
            try:
                return _episode(server, obs_map, message, key)
            except (ValueError, TypeError, KeyError) as e:
                raise Refused(f"bad episode: {e}") from e
        obs = obs_map.to_lps(message)
        size = server.checked_size(obs, where=obs_map.where())
    except (ValueError, TypeError, KeyError, RecursionError) as e:  # ProtocolError is a ValueError
        raise Refused(f"bad observation: {e}") from e
    try:
        chunk, version = server.act(obs, size, session)
    except ActRefused as e:
        raise Refused(str(e)) from e
    infer_ms = 1e3 * (time.perf_counter() - start)
    server.latency.record(infer_ms)
    return {"actions": chunk, "policy_version": int(version), "server_timing": {"infer_ms": infer_ms}}


def _episode(server, obs_map: ObsMap, message: dict, key: str | None) -> dict:
    """A finished episode for the learner, its token from the connection's Api-Key when it has none."""
    if server.learner is None:
        raise ValueError("this server does not learn from episodes; start it with `lps serve RUN --learn`")
    request = dict(message)
    if "token" not in request and key is not None:
        request["token"] = key
    observations = request.get("observations")
    if isinstance(observations, dict) and any(k in obs_map.lps_key_of for k in flatten(observations)):
        request["observations"] = obs_map.to_lps(observations)
    return {**server.learner.receive(request), "policy_version": server.policy_version}


def connection_handler(server, obs_keys: list[tuple[str, str]] = ()) -> Callable:
    """The websockets handler serving one openpi connection with `server` (a PolicyServer)."""
    obs_map = ObsMap(server.obs_spec, list(obs_keys))

    def handle(ws) -> None:
        from websockets.exceptions import ConnectionClosed

        session, key, previous_ms = server.new_session(), api_key(ws.request.headers), None
        try:
            ws.send(packb(plain({**server.spec_reply(), "openpi_observation": obs_map.table()})))
            for payload in ws:
                start = time.perf_counter()
                try:
                    reply = answer(server, obs_map, payload, session, key)
                except Refused as e:
                    server.latency.record(None)
                    ws.send(f"lps serve: {e}")
                    ws.close(INTERNAL_ERROR, "the observation was refused; the reason is in the previous frame")
                    return
                except Exception:  # noqa: BLE001 - as openpi's server: the traceback to the client, then close
                    server.log(f"[lps serve] openpi connection failed:\n{traceback.format_exc()}")
                    ws.send(traceback.format_exc())
                    ws.close(INTERNAL_ERROR, "internal server error; the traceback is in the previous frame")
                    return
                if previous_ms is not None and "server_timing" in reply:
                    reply["server_timing"]["prev_total_ms"] = previous_ms
                ws.send(packb(reply))
                previous_ms = 1e3 * (time.perf_counter() - start)
        except ConnectionClosed:
            pass  # the client went away; its thread ends here

    return handle
