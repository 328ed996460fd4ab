"""`divertor.yaml`: the engine's one typed configuration schema, with its defaults.

Every key is documented in docs/configuration.md. Unknown keys are refused with file:line.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from allowlist.config import AllowlistConfig
from collector.decoder import DecoderConfig
from collector.sources.udp import parse_listen
from divertor import typedyaml


@dataclass(slots=True)
class CollectorConfig:
    listen: list[str] = field(
        default_factory=lambda: [
            f"{h}:{p}" for p in (2055, 4739, 6343) for h in ("0.0.0.0", "[::]")
        ]
    )
    rcvbuf: int = 32 << 20
    state_file: str | None = None
    default_sampling_rate: int = 1
    sampling_overrides: dict[str, int] = field(default_factory=dict)  # exporter -> 1:N
    max_exporters: int = 4096
    max_templates_per_exporter: int = 1024
    max_pending_sets: int = 8192
    pending_max_age: float = 120.0

    def __post_init__(self) -> None:
        if self.default_sampling_rate < 1:
            raise ValueError("default_sampling_rate must be >= 1")
        for exporter, rate in self.sampling_overrides.items():
            ipaddress.ip_address(exporter)
            if rate < 1:
                raise ValueError(f"sampling_overrides.{exporter}: rate must be >= 1")

    def decoder(self) -> DecoderConfig:
        return DecoderConfig(
            default_sampling_rate=self.default_sampling_rate,
            sampling_overrides=dict(self.sampling_overrides),
            max_exporters=self.max_exporters,
            max_templates_per_exporter=self.max_templates_per_exporter,
            max_pending_sets=self.max_pending_sets,
            pending_max_age=self.pending_max_age,
        )


@dataclass(slots=True)
class DetectorConfig:
    window: float = 96.0  # seconds of bins kept open for late records
    horizon: float = 64.0  # over runs are looked for this far back (>= max export delay)
    under_window: float = 45.0  # "under" = no bin above the clear level this far back

    def __post_init__(self) -> None:
        if not 0 < self.under_window <= self.horizon < self.window:
            raise ValueError("need 0 < under_window <= horizon < window")


_UNSAFE_PATH = frozenset(" \t;{}#\"'\\")  # a path spliced into ExaBGP's config


def _as_number(value: int | None, name: str) -> None:
    if value is not None and not 1 <= value <= 4294967295:
        raise ValueError(f"{name} {value}: expected an AS number 1-4294967295")


def _address(value: str, name: str, version: int | None = None) -> None:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{name} {value!r}: not an IP address") from None
    if version is not None and addr.version != version:
        raise ValueError(f"{name} {value!r}: expected an IPv{version} address")


def _plain(text: str, name: str) -> None:
    if any(not c.isprintable() for c in text):
        raise ValueError(f"{name} {text!r}: control characters are not allowed")


@dataclass(slots=True)
class BgpPeer:
    """One BGP session of the ExaBGP that Divertor starts (docs/bgp.md)."""

    address: str  # the router's address
    peer_as: int
    local_address: str | None = None  # default: bgp.router_id
    port: int = 179
    hold_time: int = 90
    families: list[str] = field(default_factory=lambda: ["ipv4 unicast", "ipv6 unicast"])
    description: str = ""
    md5_password: str | None = None

    def __post_init__(self) -> None:
        _address(self.address, "address")
        if self.local_address is not None:
            _address(self.local_address, "local_address")
        _as_number(self.peer_as, "peer_as")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port}: expected 1-65535")
        if self.hold_time != 0 and not 3 <= self.hold_time <= 65535:
            raise ValueError(f"hold_time {self.hold_time}: expected 0 or 3-65535")
        for fam in self.families:
            if fam not in ("ipv4 unicast", "ipv6 unicast"):
                raise ValueError(f"family {fam!r}: expected 'ipv4 unicast' or 'ipv6 unicast'")
        if not self.families:
            raise ValueError("families: at least one")
        if not all(c.isalnum() or c in " .,_:/()-" for c in self.description):
            raise ValueError(f"description {self.description!r}: letters, digits, ' .,_:/()-'")
        if self.md5_password is not None and (
            not self.md5_password
            or any(c in _UNSAFE_PATH or not c.isprintable() for c in self.md5_password)
        ):
            raise ValueError("md5_password: printable, without spaces, quotes, ;{}#\\")


@dataclass(slots=True)
class BgpConfig:
    mode: str = "dry-run"  # dry-run | manual-approval | automatic
    max_prefix_length_v4: int = 24
    max_prefix_length_v6: int = 48
    max_diversions: int = 32
    max_changes_per_hour: int = 120
    #: a prefix re-announced within dampening_reset of its withdraw is held
    #: dampening_hold x 2^(n-1) (at most dampening_max_hold) before its next withdraw
    dampening_hold: float = 60.0
    dampening_max_hold: float = 3600.0
    dampening_reset: float = 3600.0
    #: store (bgp.sqlite), bridge socket, generated exabgp.conf; relative to this file
    state_dir: str = "/var/lib/divertor/bgp"
    local_as: int | None = None
    router_id: str | None = None  # IPv4; also the default local address of the peers
    peers: list[BgpPeer] = field(default_factory=list)
    origin_as: int | None = None  # for RPKI (default: local_as)
    rpki_vrp_file: str | None = None  # rpki-client / Routinator JSON; relative to this file
    rpki_not_found: str = "allow"  # allow | refuse: a prefix that no ROA covers
    next_hop_v4: str | None = None  # for routes without an IPv4 next hop ("self" allowed)
    next_hop_v6: str | None = None  # for IPv6 routes without an IPv6 next hop
    exabgp_command: list[str] = field(default_factory=list)  # default: python -m exabgp
    exabgp_user: str | None = None  # exabgp.daemon.user (default: the user running divertor)
    poll_interval: float = 1.0  # seconds between the bridge's checks of the store
    ack_timeout: float = 10.0  # an ExaBGP ack later than this is reported

    def __post_init__(self) -> None:
        if self.mode not in ("dry-run", "manual-approval", "automatic"):
            raise ValueError(f"mode {self.mode!r}: expected dry-run, manual-approval or automatic")
        if not 8 <= self.max_prefix_length_v4 <= 32 or not 16 <= self.max_prefix_length_v6 <= 128:
            raise ValueError("max_prefix_length out of range")
        if self.max_diversions < 0 or self.max_changes_per_hour < 0:
            raise ValueError("max_diversions and max_changes_per_hour must be >= 0")
        if min(self.dampening_hold, self.dampening_max_hold, self.dampening_reset) < 0:
            raise ValueError("dampening times must be >= 0")
        if not self.state_dir or any(c in _UNSAFE_PATH for c in self.state_dir):
            raise ValueError(f"state_dir {self.state_dir!r}: no spaces, quotes or ;{{}}#\\")
        _plain(self.state_dir, "state_dir")
        _as_number(self.local_as, "local_as")
        _as_number(self.origin_as, "origin_as")
        if self.router_id is not None:
            _address(self.router_id, "router_id", 4)
        if self.rpki_not_found not in ("allow", "refuse"):
            raise ValueError(f"rpki_not_found {self.rpki_not_found!r}: expected allow or refuse")
        if self.rpki_vrp_file is not None:
            _plain(self.rpki_vrp_file, "rpki_vrp_file")
        if self.next_hop_v4 is not None and self.next_hop_v4 != "self":
            _address(self.next_hop_v4, "next_hop_v4", 4)
        if self.next_hop_v6 is not None:
            _address(self.next_hop_v6, "next_hop_v6", 6)
        for arg in self.exabgp_command:
            _plain(arg, "exabgp_command")
        if (
            self.exabgp_user is not None
            and not self.exabgp_user.replace("-", "").replace("_", "").isalnum()
        ):
            raise ValueError(f"exabgp_user {self.exabgp_user!r}: not a user name")
        if self.poll_interval <= 0 or self.ack_timeout <= 0:
            raise ValueError("poll_interval and ack_timeout must be > 0")
        seen = set()
        for p in self.peers:
            if p.address in seen:
                raise ValueError(f"peers: {p.address} twice")
            seen.add(p.address)
        if self.peers and (self.local_as is None or self.router_id is None):
            raise ValueError("peers need local_as and router_id")


@dataclass(slots=True)
class ApiConfig:
    """The daemon's HTTP API: /metrics, /status, /incidents and the write endpoints."""

    listen: str = "127.0.0.1:9180"  # host:port or [v6]:port; "" turns the API off
    #: file holding the token of the write endpoints (Authorization: Bearer); relative to
    #: this file; none: the write endpoints answer 403
    token_file: str | None = None

    def __post_init__(self) -> None:
        if self.listen:
            host, _ = parse_listen(self.listen)
            _address(host, "listen")
        if self.token_file is not None:
            _plain(self.token_file, "token_file")


@dataclass(slots=True)
class TimelineConfig:
    """The timeline store of `divertor run` (docs/incidents.md)."""

    path: str = "/var/lib/divertor/timeline.sqlite"  # relative to this file
    retention_days: float = 90.0  # lines and incident bins older than this are pruned
    keep_recent: float = 600.0  # seconds of every prefix's bins kept outside incidents
    pre_incident: float = 300.0  # seconds of bins kept before an incident starts

    def __post_init__(self) -> None:
        _plain(self.path, "path")
        if self.retention_days <= 0:
            raise ValueError("retention_days must be > 0")
        if not 0 <= self.pre_incident <= self.keep_recent:
            raise ValueError("need 0 <= pre_incident <= keep_recent")


@dataclass(slots=True)
class HistoryConfig:
    """The rate history of `divertor run` (docs/history.md): recorded settled rates and the
    baselines of the anomaly rules. ``path`` none: no history, anomaly rules fall back."""

    path: str | None = None  # history directory (DIR/history.duckdb); relative to this file
    refresh_every: float = 3600.0  # seconds between baseline refreshes (and mix model fits)
    record: bool = True  # record the settled rates into it (the engine is its one writer)

    def __post_init__(self) -> None:
        if self.path is not None:
            _plain(self.path, "path")
        if self.refresh_every <= 0:
            raise ValueError("refresh_every must be > 0")


@dataclass(slots=True)
class DaemonConfig:
    """How `divertor run` moves work between its threads."""

    queue_batches: int = 64  # receive -> decode hand-over; a full queue drops (counted)
    stats_interval: float = 60.0  # seconds between stats lines in the log
    exporter_silent_after: float = 120.0  # seconds without datagrams: "exporter silent"
    state_every: float = 60.0  # seconds between saves of the decoder's template state

    def __post_init__(self) -> None:
        if self.queue_batches < 1:
            raise ValueError("queue_batches must be >= 1")
        if min(self.stats_interval, self.exporter_silent_after, self.state_every) <= 0:
            raise ValueError("intervals must be > 0")


@dataclass(slots=True)
class CleanReturn:
    """Flows of clean traffic coming back from the scrubbing center (GRE, VLAN)."""

    exporter: str
    interface: int

    def __post_init__(self) -> None:
        ipaddress.ip_address(self.exporter)


@dataclass(slots=True)
class Config:
    thresholds: str  # path of the thresholds file, relative to this file
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    bgp: BgpConfig = field(default_factory=BgpConfig)
    clean_return: list[CleanReturn] = field(default_factory=list)
    allowlist: AllowlistConfig = field(default_factory=AllowlistConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    timeline: TimelineConfig = field(default_factory=TimelineConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    source: str = field(default="", init=False)


def load(path: str) -> Config:
    with open(path) as fh:
        cfg = typedyaml.load(Config, fh.read(), path)
    cfg.source = path
    if not os.path.isabs(cfg.thresholds):
        cfg.thresholds = os.path.join(os.path.dirname(os.path.abspath(path)), cfg.thresholds)
    base = os.path.dirname(os.path.abspath(path))
    cfg.allowlist.resolve(base)
    cfg.timeline.path = os.path.join(base, cfg.timeline.path)
    if cfg.history.path is not None:
        cfg.history.path = os.path.join(base, cfg.history.path)
    if cfg.api.token_file is not None:
        cfg.api.token_file = os.path.join(base, cfg.api.token_file)
    if cfg.collector.state_file is not None:
        cfg.collector.state_file = os.path.join(base, cfg.collector.state_file)
    return cfg
