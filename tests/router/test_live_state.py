"""Live state flows one way: a sidecar learns other tiers' state (asleep or not, serving
checkpoint) from their sidecars, not from its config file. Real sidecars and fake
engines on loopback; the Peers bookkeeping itself with an injected clock."""

from __future__ import annotations

import json
import socket
import time

from shoal.router.decision import TierState
from shoal.router.peers import ASLEEP, Peers, state_url

from .conftest import ladder_config, wait_for

CHECKPOINT_ENV = "SHOAL_SERVING_CHECKPOINT"
PEERS = {"pollIntervalSeconds": 0.2, "pollTimeoutSeconds": 0.3, "staleAfterSeconds": 1.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _medium_sidecar_config(engines, tmp_path):
    config = ladder_config(engines, tmp_path, modelTier="mid", localTier="medium", rules=[],
                           engine={"metricsUrl": engines["medium"].root + "/metrics", "scrapeIntervalSeconds": 0.1})
    config["tiers"] = [
        {"name": "small", "kind": "service", "url": "http://127.0.0.1:9/v1", "model": "smol-chat"},
        {"name": "medium", "kind": "local", "url": engines["medium"].base_url, "model": "mid-chat"},
        config["tiers"][2],
    ]
    return config


def test_after_a_peers_checkpoint_changes_no_cached_answer_of_the_old_one_is_served_after_the_bound(fresh_engines, start_router, tmp_path):
    port = _free_port()
    medium_config = _medium_sidecar_config(fresh_engines, tmp_path)
    old_peer = start_router(medium_config, env={CHECKPOINT_ENV: "ckpt-A"}, port=port)
    small_config = ladder_config(fresh_engines, tmp_path, peers=PEERS)
    small_config["tiers"][1]["url"] = f"http://127.0.0.1:{port}/v1"
    small = start_router(small_config)
    body = {"model": "x", "messages": [{"role": "user", "content": "fix my python"}], "temperature": 0}  # rule code -> medium

    wait_for(lambda: small.state()["peers"].get("medium", {}).get("checkpoint") == "ckpt-A", "the peer's checkpoint learned by polling")
    first = small.post("/v1/chat/completions", body)
    second = small.post("/v1/chat/completions", body)
    assert (first[1]["x-shoal-tier"], first[1]["x-shoal-route-reason"], first[1]["x-shoal-checkpoint"]) == ("medium", "rule:code", "ckpt-A")
    assert (second[1]["x-shoal-route-reason"], second[1]["x-shoal-checkpoint"], second[2]) == ("cache", "ckpt-A", first[2])

    # The peer's pods are replaced by pods serving ckpt-B (same Service address); the
    # small sidecar's config file is never touched.
    fresh_engines["medium"].configure(reply="Reply from B.")
    old_peer.stop()
    gone = time.monotonic()
    start_router(medium_config, env={CHECKPOINT_ENV: "ckpt-B"}, port=port)

    seen: list[tuple[float, int, str | None, str, bytes]] = []

    def ask() -> bool:
        sent = time.monotonic() - gone
        status, headers, data = small.post("/v1/chat/completions", body)
        seen.append((sent, status, headers.get("x-shoal-checkpoint"), headers.get("x-shoal-route-reason", ""), data))
        return headers.get("x-shoal-checkpoint") == "ckpt-B" and headers.get("x-shoal-route-reason") == "cache"

    wait_for(ask, "a cached answer of the new checkpoint", timeout=60)
    stale_bound = PEERS["staleAfterSeconds"]
    assert [s for s in seen if s[0] > stale_bound and s[2] == "ckpt-A"] == []
    assert all(status == 200 for _, status, _, _, _ in seen)
    assert json.loads(seen[-1][4])["choices"][0]["message"]["content"] == "Reply from B."
    config_file = json.loads(small.config_path.read_text())
    assert "checkpoint" not in config_file["tiers"][1]


def test_the_state_endpoint_and_every_answer_carry_the_pods_own_checkpoint(fresh_engines, start_router, tmp_path):
    peer = start_router(_medium_sidecar_config(fresh_engines, tmp_path), env={CHECKPOINT_ENV: "hf://org/mid@v7"})
    state = peer.state()
    assert {k: state[k] for k in ("tier", "modelTier", "checkpoint", "ready")} == {
        "tier": "medium", "modelTier": "mid", "checkpoint": "hf://org/mid@v7", "ready": True
    }
    hop = {"x-shoal-hop": "1", "x-shoal-tier": "medium"}
    status, headers, _ = peer.post("/v1/chat/completions", {"model": "mid-chat", "messages": [{"role": "user", "content": "hi"}]}, hop)
    assert (status, headers["x-shoal-checkpoint"]) == (200, "hf://org/mid@v7")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_peers_checkpoint_is_trusted_only_while_fresh_and_newer_evidence_wins():
    clock = Clock()
    peers = Peers(clock=clock)
    peers.polled("medium", 100.0, {"ready": True, "checkpoint": "A", "waiting": 3}, reachable=True)
    assert peers.checkpoint("medium", stale_after=5) == "A"
    assert peers.tier_states() == {"medium": TierState(waiting=3.0)}
    # An answer header sent later says B; a poll sent earlier but answered after it does not undo that.
    peers.heard("medium", "B", 101.0)
    peers.polled("medium", 100.5, {"ready": True, "checkpoint": "A"}, reachable=True)
    assert peers.checkpoint("medium", stale_after=5) == "B"
    clock.now = 106.01
    assert peers.checkpoint("medium", stale_after=5) is None
    # Unreachable: asleep for the decision, and the old evidence keeps ageing.
    peers.polled("medium", 106.0, None, reachable=False)
    assert peers.tier_states() == {"medium": ASLEEP}
    assert peers.checkpoint("medium", stale_after=5) is None
    # Something that is not a sidecar answered: awake, checkpoint unknown.
    peers.polled("large", 106.0, None, reachable=True)
    assert "large" not in peers.tier_states()
    assert state_url("http://mid.ml.svc/v1") == "http://mid.ml.svc/shoal/state"
