"""`PolicyClient` across dropped connections: a tiny LPS policy trained on a small npz dataset is
served on 127.0.0.1 (in a thread of this process), and the websocket server is shut down and
started again on the same port under a connected client. The tests check that `act` reconnects
and returns a chunk, that with no server coming back it raises ConnectionError within its bounded
retries, and that an episode recorded across a reconnect reaches a `--learn` server exactly once.
A stand-in server speaking the wire format (no JAX) checks what a frame-stacked `Episode` sends
after a reconnect, and that a request that got no reply in time is answered on a new connection,
never by the late reply on the old one.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import helpers
import numpy as np
import pytest

from lps import client as C
from lps.agents import LPSConfig
from lps.deploy import learner as L
from lps.deploy.serve import load_server
from lps.training.loop import train

OBS_DIM, ACTION_DIM, CHUNK = 4, 2, 3
EPISODES, STEPS = 4, 20
SMALL = LPSConfig(base_hidden=(16, 16), critic_hidden=(16, 16), actor_hidden=(8,))
TOKEN = "reconnect-test-token"


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("reconnect")
    np.savez(d / "demos.npz", **helpers.drift_episodes(EPISODES, STEPS, OBS_DIM, ACTION_DIM))
    cfg = helpers.toy_config(d / "run", dataset=str(d / "demos.npz"), chunk_len=CHUNK, steps=20, save_every=20,
                             log_every=20, batch_size=16)  # fmt: skip
    train("lps", cfg, SMALL)
    return d / "run"


@pytest.fixture(scope="module")
def policy_server(offline_run):
    return load_server(offline_run, device="cpu", log_every_s=0.0, log=lambda s: None, precompile=False)


class Listening:
    """A PolicyServer's websocket server on 127.0.0.1 in a thread; `restart` stops it and listens
    again on the same port (every connection of the old one closed)."""

    def __init__(self, server, port: int = 0):
        self.server = server
        self.ws = server.start("127.0.0.1", port)
        self.port = self.ws.socket.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.ws.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.ws.shutdown()
        self.thread.join(timeout=10)

    def restart(self) -> Listening:
        self.stop()
        return Listening(self.server, self.port)


def test_act_reconnects_to_a_server_restarted_on_the_same_port(policy_server):
    first = Listening(policy_server)
    later: list[Listening] = []
    lines: list[str] = []
    try:
        obs = np.zeros(OBS_DIM, np.float32)
        client = C.PolicyClient(first.url, timeout=30, backoff_s=0.05, log=lines.append)
        assert client.act(obs).shape == (CHUNK, ACTION_DIM)
        first.stop()
        # The server comes back 0.3 s later: the first reconnect attempts are refused.
        timer = threading.Timer(0.3, lambda: later.append(Listening(policy_server, first.port)))
        timer.start()
        chunk = client.act(obs)
        timer.join()
        assert chunk.shape == (CHUNK, ACTION_DIM) and np.isfinite(chunk).all()
        assert client.connections == 2
        assert any(f"reconnected to {first.url} after" in line for line in lines), lines
        assert client.act(obs).shape == (CHUNK, ACTION_DIM) and client.connections == 2  # no reconnect needed
        client.close()
    finally:
        first.stop()
        for listening in later:
            listening.stop()


def test_act_raises_connection_error_after_bounded_retries(policy_server):
    listening = Listening(policy_server)
    client = C.PolicyClient(listening.url, timeout=5, retries=3, backoff_s=0.05, max_backoff_s=0.1)
    client.act(np.zeros(OBS_DIM, np.float32))
    listening.stop()  # and no server comes back
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="3 attempt") as failed:
        client.act(np.zeros(OBS_DIM, np.float32))
    assert time.monotonic() - start < 3.0  # waits 0.05 + 0.1 + 0.1 s, refused connections fail at once
    message = str(failed.value)
    assert listening.url in message and "lps serve" in message and "network" in message
    assert client.connections == 1
    client.close()


def test_episode_recorded_across_a_reconnect_is_stored_once(offline_run, tmp_path):
    run = helpers.copy_run(offline_run, tmp_path / "run")
    srv = load_server(run, device="cpu", log_every_s=0.0, log=lambda s: None, precompile=False)
    # start_episodes 2: the one episode is stored and owes no updates (no update step compiled here).
    lcfg = L.LearnerConfig(token=TOKEN, utd=1.0, start_episodes=2, batch_size=0, update_block=10, buffer_rows=2000,
                           max_steps=200)  # fmt: skip
    learner = L.attach(srv, run, lcfg, log=lambda s: None)
    listening = Listening(srv)
    try:
        rng = np.random.default_rng(1)
        with C.PolicyClient(listening.url, token=TOKEN, backoff_s=0.05) as client, C.Episode(client) as ep:
            for t in range(12):
                obs = rng.normal(0, 0.1, OBS_DIM).astype(np.float32)
                if t % CHUNK == 0:
                    chunk = ep.act(obs)
                ep.record(obs, chunk[t % CHUNK])
                if t in (4, 10):  # in the middle of a chunk, and just before the episode is sent
                    listening = listening.restart()
            reply = ep.finish(success=True)
            assert client.connections == 3
        assert reply["type"] == "episode_ack" and reply["duplicate"] is False
        files = L.episode_files(run / "learner" / "episodes")
        assert len(files) == 1 and ep.id in files[0].name
        with np.load(files[0]) as stored:
            assert len(stored["actions"]) == 12
    finally:
        learner.close()
        listening.stop()


# --- a stand-in server: what the client sends ---------------------------------------------------


class StandIn:
    """Speaks `lps serve`'s wire format without a policy: a spec with `frame_stack` 3, and for
    every act a (CHUNK, ACTION_DIM) chunk filled with the request's number. Requests numbered in
    `hang_up` close the connection unanswered; those in `late` are answered after `late_s`."""

    def __init__(self, port: int = 0, hang_up=(), late=(), late_s: float = 0.0):
        from websockets.sync.server import serve

        self.requests: list[tuple[int, dict]] = []  # (connection number, request)
        self.hang_up, self.late, self.late_s = set(hang_up), set(late), late_s
        self._connections = 0
        self._lock = threading.Lock()
        self.ws = serve(self._handle, "127.0.0.1", port)
        self.port = self.ws.socket.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.ws.serve_forever, daemon=True)
        self.thread.start()

    def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        with self._lock:
            self._connections += 1
            connection = self._connections
        try:
            for payload in ws:
                request = C.unpack(payload)
                with self._lock:
                    self.requests.append((connection, request))
                    number = len(self.requests)
                if request.get("type") == "spec":
                    ws.send(C.pack({"type": "spec", "frame_stack": 3, "chunk_len": CHUNK, "action_dim": ACTION_DIM}))
                    continue
                if number in self.hang_up:
                    ws.close()
                    return
                if number in self.late:
                    time.sleep(self.late_s)
                ws.send(C.pack({"action": np.full((CHUNK, ACTION_DIM), number, np.float32), "latency_ms": 0.0}))
        except ConnectionClosed:
            pass

    def acts(self) -> list[tuple[int, Any, list]]:
        """(connection, obs, frames) of every act request so far."""
        return [(c, _plain(r["obs"]), [_plain(f) for f in r.get("frames", [])]) for c, r in self.requests if "obs" in r]

    def stop(self) -> None:
        self.ws.shutdown()
        self.thread.join(timeout=10)


def _plain(obs):
    return float(np.asarray(obs).ravel()[0]) if np.ndim(obs) else obs


def test_frame_stacked_episode_resends_its_last_frames_after_a_reconnect():
    """Request 1 is the spec, 2 the first act, 4 (the third act) is hung up on; later the server
    is restarted. On a new connection (no frames held) the last K-1 = 2 recorded steps are sent."""
    first = StandIn(hang_up={4})
    second = None
    try:
        client = C.PolicyClient(first.url, timeout=10, backoff_s=0.01)
        ep = C.Episode(client, "ep-1")
        ep.act(0)
        for t in range(5):  # a chunk of 5 steps executed from observation 0
            ep.record(t, np.zeros(ACTION_DIM))
        ep.act(5)
        for t in range(5, 7):
            ep.record(t, np.zeros(ACTION_DIM))
        ep.act(7)  # hung up on: resent on a new connection
        ep.record(7, np.zeros(ACTION_DIM))
        ep.act(8)
        first.stop()
        second = StandIn(first.port)  # a restarted server
        ep.record(8, np.zeros(ACTION_DIM))
        ep.act(9)
        assert client.connections == 3
        client.close()
    finally:
        first.stop()
        if second is not None:
            second.stop()
    # (connection, acted observation, frames): the steps the connection's stack lacks, oldest first.
    assert first.acts() == [(1, 0, []), (1, 5, [3, 4]), (1, 7, [6]), (2, 7, [5, 6]), (2, 8, [])]
    assert second.acts() == [(1, 9, [7, 8])]


def test_a_late_reply_is_never_read_as_the_answer_to_a_new_request():
    server = StandIn(late={2}, late_s=1.0)  # request 1: the spec, 2: the first act, answered too late
    try:
        client = C.PolicyClient(server.url, timeout=0.3, retries=2, backoff_s=0.01)
        client.spec()
        first = client.act(np.zeros(OBS_DIM, np.float32))
        second = client.act(np.ones(OBS_DIM, np.float32))
        client.close()
    finally:
        server.stop()
    # The first act was resent on connection 2 as request 3; request 2's late reply (2.0) went to
    # the abandoned connection and answers nothing.
    assert np.all(first == 3.0) and np.all(second == 4.0)
    assert [c for c, _, _ in server.acts()] == [1, 2, 2]
