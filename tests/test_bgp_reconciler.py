"""The sans-I/O reconciler: one command at a time, resync on start and session up."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from bgp import commands
from bgp.reconciler import Acked, Action, Event, Listed, Reconciler, Write
from detector.contracts import Route

A = commands.announce(Route("203.0.113.0/24", "192.0.2.1", ("65000:666",)))
A2 = commands.announce(Route("203.0.113.0/24", "192.0.2.1", ("65000:777",)))
B = commands.announce(Route("198.18.10.0/24", "192.0.2.1"))
C = commands.announce(Route("2001:db8:a00::/48", "2001:db8::1"))
ADJ = "show adj-rib out json"
UP = json.dumps(
    {
        "exabgp": "5.0.0",
        "type": "state",
        "neighbor": {"address": {"local": "127.0.0.1", "peer": "127.0.0.2"}, "state": "up"},
    }
)
DOWN = UP.replace('"up"', '"down"')


def writes(actions: list[Action]) -> list[str]:
    return [a.line for a in actions if isinstance(a, Write)]


def events(actions: list[Action], what: str) -> list[dict[str, object]]:
    return [a.data for a in actions if isinstance(a, Event) and a.data["event"] == what]


def listing(*prefixes: str) -> str:
    fam = {"routes": [{"prefix": p, "family": "ipv4 unicast"} for p in prefixes]}
    return json.dumps({"127.0.0.2": fam})


def started(target: dict[str, str], listed: tuple[str, ...] = ()) -> tuple[Reconciler, list[str]]:
    """A new process: the target arrives, ExaBGP lists ``listed``, everything is acked."""
    r = Reconciler(enable_ack=False)
    assert writes(r.started(0.0)) == []  # nothing before the target is known
    first = writes(r.desired(target, 0.0))
    assert first == [ADJ]  # a resync starts with the listing
    sent = [ADJ, *drive_pending(r, {ADJ: [listing(*listed)] if listed else []})]
    return r, sent


def drive_pending(r: Reconciler, answer: dict[str, list[str]]) -> list[str]:
    """The command in flight and every next one are answered (canned replies, then done)."""
    assert r.inflight is not None
    sent: list[str] = []
    out: list[Action] = []
    for reply in answer.get(r.inflight.line, []):
        out += r.line(reply, 0.0)
    out += r.line("done", 0.0)
    while writes(out):
        (line,) = writes(out)
        sent.append(line)
        out = []
        for reply in answer.get(line, []):
            out += r.line(reply, 0.0)
        out += r.line("done", 0.0)
    return sent


def test_start_lists_withdraws_what_is_beyond_then_reasserts_everything() -> None:
    target = {"203.0.113.0/24": A, "2001:db8:a00::/48": C}
    r, sent = started(target, listed=("203.0.113.0/24", "2001:db8:a00::/48", "198.51.100.0/24"))
    assert sent == [ADJ, "withdraw route 198.51.100.0/24", C, A, "show neighbor json"]
    assert r.rib == target
    assert r.idle


def test_enable_ack_comes_first() -> None:
    r = Reconciler()
    r.started(0.0)
    assert writes(r.desired({"203.0.113.0/24": A}, 0.0)) == ["enable-ack"]
    assert drive_pending(r, {}) == [ADJ, A, "show neighbor json"]


def test_changes_one_at_a_time_withdraws_first() -> None:
    r, _ = started({"203.0.113.0/24": A})
    out = r.desired({"198.18.10.0/24": B, "2001:db8:a00::/48": C}, 1.0)
    assert writes(out) == ["withdraw route 203.0.113.0/24"]
    assert writes(r.desired({"198.18.10.0/24": B, "2001:db8:a00::/48": C}, 1.0)) == []
    out = r.line("done", 1.0)
    assert Acked("203.0.113.0/24", None) in out
    assert writes(out) == [B]
    assert writes(r.line("done", 1.0)) == [C]
    assert writes(r.line("done", 1.0)) == []
    assert r.rib == {"198.18.10.0/24": B, "2001:db8:a00::/48": C}


def test_changed_attributes_are_announced_again() -> None:
    r, _ = started({"203.0.113.0/24": A})
    assert writes(r.desired({"203.0.113.0/24": A2}, 1.0)) == [A2]
    assert writes(r.line("done", 1.0)) == []
    assert r.rib["203.0.113.0/24"] == A2


def test_target_changing_while_a_command_is_in_flight() -> None:
    r, _ = started({})
    assert writes(r.desired({"203.0.113.0/24": A}, 1.0)) == [A]
    assert writes(r.desired({"203.0.113.0/24": A2}, 1.0)) == []  # waits for the ack
    assert writes(r.line("done", 1.0)) == [A2]
    assert writes(r.desired({}, 1.0)) == []
    assert writes(r.line("done", 1.0)) == ["withdraw route 203.0.113.0/24"]
    r.line("done", 1.0)
    assert r.rib == {} and r.idle


def test_error_is_reported_and_not_retried_until_the_target_changes() -> None:
    r, _ = started({})
    assert writes(r.desired({"203.0.113.0/24": A}, 1.0)) == [A]
    out = r.line("error", 1.0)
    assert events(out, "error")[0]["command"] == A
    assert writes(out) == [] and r.tick(2.0) == [] and r.idle
    assert writes(r.desired({"203.0.113.0/24": A2}, 3.0)) == [A2]


def test_session_up_resyncs() -> None:
    r, _ = started({"203.0.113.0/24": A}, listed=("203.0.113.0/24",))
    out = r.line(DOWN, 5.0)
    assert events(out, "session")[0]["state"] == "down" and writes(out) == []
    out = r.line(UP, 6.0)
    assert events(out, "session")[0]["state"] == "up" and writes(out) == [ADJ]
    assert drive_pending(r, {ADJ: [listing("203.0.113.0/24")]}) == [A]  # re-asserted
    # an up while a command is in flight: the resync follows it
    assert writes(r.desired({"203.0.113.0/24": A, "198.18.10.0/24": B}, 7.0)) == [B]
    assert writes(r.line(UP, 7.0)) == []
    assert writes(r.line("done", 7.0)) == [ADJ]


def test_routes_listed_are_reasserted_and_unlisted_announced() -> None:
    r, _ = started({"203.0.113.0/24": A, "198.18.10.0/24": B}, listed=("203.0.113.0/24",))
    assert r.rib == {"203.0.113.0/24": A, "198.18.10.0/24": B}


def test_no_listing_withdraws_only_what_is_known() -> None:
    r, _ = started({"203.0.113.0/24": A})
    r.desired({"198.18.10.0/24": B}, 1.0)  # withdraw A in flight ...
    r.line("error", 1.0)  # ... refused: A may still be out there; then B
    r.line("done", 1.0)
    assert writes(r.line(UP, 2.0)) == [ADJ]
    out = r.line("error", 2.0)  # no listing
    assert writes(out) == ["withdraw route 203.0.113.0/24"]  # known, so retried
    assert next(a for a in out if isinstance(a, Listed)).rib == {
        "203.0.113.0/24": "",
        "198.18.10.0/24": "",
    }
    assert writes(r.line("done", 2.0)) == [B]


def test_ack_overdue_is_reported_once_and_waited_for() -> None:
    r, _ = started({})
    r.desired({"203.0.113.0/24": A}, 0.0)
    assert r.tick(5.0) == []
    out = r.tick(10.5)
    assert events(out, "ack-overdue")[0]["command"] == A
    assert r.tick(20.0) == []
    assert writes(r.desired({"198.18.10.0/24": B}, 21.0)) == []  # still waiting
    assert writes(r.line("done", 22.0)) == ["withdraw route 203.0.113.0/24"]


def test_text_encoder_events_and_replies() -> None:
    r, _ = started({"203.0.113.0/24": A})
    assert events(r.line("neighbor 127.0.0.2 down - peer reset", 1.0), "session")
    assert writes(r.line("neighbor 127.0.0.2 up", 2.0)) == [ADJ]
    r.line("127.0.0.2 ipv4 unicast 198.51.100.0/24 next-hop 192.0.2.1", 2.0)
    out = r.line("done", 2.0)
    assert writes(out) == ["withdraw route 198.51.100.0/24"]
    assert events(out, "resync")[0]["extra"] == ["198.51.100.0/24"]


def test_a_damaged_target_entry_is_reported_and_never_sent() -> None:
    r, _ = started({})
    bad = {
        "203.0.113.0/24": "withdraw route 0.0.0.0/0",
        "198.18.10.0/24": B + "\nannounce route 0.0.0.0/0 next-hop 192.0.2.1",
        "2001:db8:a00::/48": C,
    }
    out = r.desired(bad, 0.0)
    assert [e["prefix"] for e in events(out, "bad-target")] == ["203.0.113.0/24", "198.18.10.0/24"]
    assert writes(out) == [C]


def test_unexpected_ack_and_noise() -> None:
    r = Reconciler(enable_ack=False)
    assert events(r.line("done", 0.0), "unexpected-ack")
    assert r.line("", 0.0) == [] and r.line("{not json", 0.0) == []
    assert events(
        r.line(
            json.dumps({"exabgp": "5", "type": "notification", "notification": "shutdown"}), 0.0
        ),
        "shutdown",
    )


class FakeExaBGP:
    """ExaBGP's adj-rib-out as the reconciler's commands change it."""

    def __init__(self) -> None:
        self.rib: dict[str, str] = {}
        self.pending: str | None = None
        self.target: dict[str, str] = {}
        self.stuck: set[str] = set()  # withdraws ExaBGP refused
        self.blind = False  # the last listing was refused: extras unknown to the bridge

    def take(self, out: list[Action]) -> None:
        w = writes(out)
        assert len(w) <= 1 and not (w and self.pending), "one command at a time"
        if w:
            self.pending = w[0]
            word, _, prefix = w[0].split()[:3] + [""] * (3 - len(w[0].split()[:3]))
            if word == "announce":  # only what is wanted, as it is wanted
                assert self.target.get(prefix) == w[0]
                if prefix not in self.rib and not self.blind:  # never more out than wanted
                    assert set(self.rib) - set(self.target) <= self.stuck
            elif word == "withdraw":  # never what is wanted
                assert prefix not in self.target

    def answer(self, r: Reconciler, word: str, t: float) -> list[Action]:
        line, self.pending = self.pending, None
        assert line is not None
        out: list[Action] = []
        if word == "done" and line.startswith("announce route "):
            self.rib[line.split()[2]] = line
        elif word == "done" and line.startswith("withdraw route "):
            self.rib.pop(line.split()[2], None)
            self.stuck.discard(line.split()[2])
        elif line.startswith("withdraw route "):
            self.stuck.add(line.split()[2])
        elif line == ADJ:
            self.blind = word != "done"
            out += r.line(listing(*self.rib), t) if self.rib and word == "done" else []
        return out + r.line(word, t)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["target", "done", "error", "up", "tick", "respawn"]),
            st.sets(st.sampled_from(["203.0.113.0/24", "198.18.10.0/24", "198.51.100.0/24"])),
        ),
        max_size=40,
    )
)
def test_property_one_in_flight_and_converges(steps: list[tuple[str, set[str]]]) -> None:
    cmds = {
        p: commands.announce(Route(p, "192.0.2.1"))
        for p in ("203.0.113.0/24", "198.18.10.0/24", "198.51.100.0/24")
    }
    exa = FakeExaBGP()
    r = Reconciler(enable_ack=False)
    exa.take(r.started(0.0))
    target: dict[str, str] = {}
    t = 0.0
    for kind, chosen in steps:
        t += 1
        if kind == "target":
            target = exa.target = {p: cmds[p] for p in chosen}
            exa.take(r.desired(target, t))
        elif kind in ("done", "error") and exa.pending:
            exa.take(exa.answer(r, kind, t))
        elif kind == "up":
            exa.take(r.line(UP, t))
        elif kind == "respawn":  # the process dies; ExaBGP keeps its rib
            exa.pending = None
            r = Reconciler(enable_ack=False)
            exa.take(r.started(t))
            exa.take(r.desired(target, t))
        else:
            exa.take(r.tick(t))
    # a session comes up (or the process restarts), then ExaBGP answers everything "done"
    exa.pending = None
    r = Reconciler(enable_ack=False)
    exa.take(r.started(t))
    exa.take(r.desired(target, t))
    for _ in range(50):
        if not exa.pending:
            break
        exa.take(exa.answer(r, "done", t))
    assert exa.rib == target and r.rib == target and r.idle
