"""packaging/: systemd units, installer, ExaBGP configuration of the plug-in unit."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from divertor import cli
from divertor import config as dconfig

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "packaging"
UNITS = sorted((PKG / "systemd").glob("*.service"))
DROPINS = sorted((PKG / "systemd").glob("*.service.d/*.conf"))
HOME = "/opt/divertor"


def _exec_lines(path: Path) -> list[str]:
    return [
        line.split("=", 1)[1]
        for line in path.read_text().splitlines()
        if re.match(r"Exec\w*=", line) and line.split("=", 1)[1]
    ]


def test_units_are_there() -> None:
    names = {p.name for p in UNITS}
    assert names == {"divertor.service", "divertor-exabgp.service"}
    main = (PKG / "systemd" / "divertor.service").read_text()
    for needed in (
        "User=divertor",
        f"ExecStart={HOME}/.venv/bin/divertor run --config /etc/divertor/divertor.yaml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
        "KillMode=process",  # ExaBGP outlives a stop: the routes stay (docs/deployment.md)
        "Restart=on-failure",
        "StateDirectory=divertor",
        "ConfigurationDirectory=divertor",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/divertor",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
    ):
        assert needed in main.splitlines(), needed


# ---------------------------------------------------------------------- (a) systemd-analyze
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_units_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the units (and divertor.service with its drop-in), with
    /opt/divertor pointed at stub executables: verify insists that commands exist."""
    home = tmp_path / "home"
    for rel in (".venv/bin/divertor", ".venv/bin/python", "packaging/exabgp-conf.sh"):
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text("#!/bin/sh\n")
        (home / rel).chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    for unit in UNITS:
        (units / unit.name).write_text(unit.read_text().replace(HOME, str(home)))
    for dropin in DROPINS:  # a drop-in appended to its unit: the same directives, one file
        base = PKG / "systemd" / dropin.parent.name.removesuffix(".d")
        text = base.read_text() + "\n" + dropin.read_text()
        (units / f"{base.stem}-{dropin.stem}.service").write_text(text.replace(HOME, str(home)))
    files = sorted(str(p) for p in units.iterdir())
    done = subprocess.run(
        ["systemd-analyze", "verify", *files],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "Unknown" not in out and "ignoring" not in out, out


# ---------------------------------------------------------------------- (c) command lines
def _divertor_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in [*UNITS, *DROPINS]:
        for line in _exec_lines(path):
            argv = shlex.split(line.lstrip("-@:+!"))
            if argv and argv[0].endswith("/bin/divertor"):
                found.append((f"{path.name}: {line}", argv[1:]))
    return found


def test_unit_command_lines_parse() -> None:
    """Every `divertor ...` line of the units parses with the real CLI (fails until the
    daemon's `run` and its options exist)."""
    commands = _divertor_commands()
    assert any(argv[:1] == ["run"] for _, argv in commands)
    parser = cli._parser()
    for where, argv in commands:
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"does not parse with divertor's CLI: {where}")
        assert args.command == argv[0]


def test_exabgp_conf_script(tmp_path: Path) -> None:
    """exabgp-conf.sh: `divertor bgp config` with the bridge run from the venv, and ExaBGP
    accepts the result."""
    home = tmp_path / "home"
    (home / ".venv" / "bin").mkdir(parents=True)
    venv = Path(sys.executable).parent
    for name in ("divertor", "python"):
        (home / ".venv" / "bin" / name).symlink_to(venv / name)
    shutil.copy(ROOT / "examples/scenarios/voip-site.thresholds.yaml", tmp_path / "t.yaml")
    cfg = tmp_path / "divertor.yaml"
    cfg.write_text(
        "thresholds: t.yaml\nbgp:\n  state_dir: state\n  local_as: 65001\n"
        "  router_id: 192.0.2.1\n  peers:\n    - {address: 192.0.2.2, peer_as: 65000}\n"
    )
    out = tmp_path / "exabgp.conf"
    env = dict(os.environ, DIVERTOR_HOME=str(home))
    done = subprocess.run(
        [str(PKG / "exabgp-conf.sh"), str(cfg), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert f"run {home}/.venv/bin/python -m bgp.bridge --config {cfg};" in text
    assert "bridge.sh" not in text and "neighbor 192.0.2.2 {" in text
    assert parse_ok(["bgp", "config", "--config", str(cfg)])
    valid = subprocess.run(
        [sys.executable, "-m", "exabgp", "validate", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert valid.returncode == 0, valid.stdout + valid.stderr
    bad = subprocess.run(
        [str(PKG / "exabgp-conf.sh"), str(tmp_path / "with space.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 2 and "paths may hold only" in bad.stderr


def parse_ok(argv: list[str]) -> bool:
    try:
        cli._parser().parse_args(argv)
    except SystemExit:
        return False
    return True


# ---------------------------------------------------------------------- (b) install.sh
def _install(dest: Path, *opts: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DESTDIR=str(dest))
    return subprocess.run(
        ["bash", str(PKG / "install.sh"), "--no-user", "--no-venv", *opts],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_into_destdir(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    done = _install(dest)
    assert done.returncode == 0, done.stderr
    assert "nothing started" in done.stdout
    home = dest / "opt/divertor"
    for rel in ("collector/sources/pcap.py", "bgp/bridge.py", "scripts/setup.sh", "pyproject.toml"):
        assert (home / rel).read_bytes() == (ROOT / rel).read_bytes(), rel
    assert _mode(home / "packaging/exabgp-conf.sh") & 0o111
    assert not (home / ".venv").exists() and not (home / ".git").exists()
    assert not list(home.rglob("__pycache__"))
    etc = dest / "etc"
    installed = {
        "systemd/system/divertor.service": "packaging/systemd/divertor.service",
        "systemd/system/divertor-exabgp.service": "packaging/systemd/divertor-exabgp.service",
        "sysusers.d/divertor.conf": "packaging/sysusers.d/divertor.conf",
        "tmpfiles.d/divertor.conf": "packaging/tmpfiles.d/divertor.conf",
        "sysctl.d/90-divertor.conf": "packaging/sysctl.d/90-divertor.conf",
        "divertor/divertor.yaml": "packaging/divertor.yaml",
        "divertor/thresholds.yaml": "examples/scenarios/voip-site.thresholds.yaml",
    }
    for rel, src in installed.items():
        assert (etc / rel).read_bytes() == (ROOT / src).read_bytes(), rel
    cli_bin = dest / "usr/local/bin/divertor"
    assert cli_bin.read_bytes() == (PKG / "divertor-cli.sh").read_bytes()
    assert _mode(cli_bin) == 0o755
    assert _mode(etc / "divertor/divertor.yaml") == 0o640
    token = (etc / "divertor/api.token").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", token) and _mode(etc / "divertor/api.token") == 0o640
    assert _mode(dest / "var/lib/divertor") == 0o750 and (dest / "var/lib/divertor/bgp").is_dir()
    assert not (etc / "systemd/system/divertor.service.d").exists()
    # the installed configuration is valid, api and timeline included
    cfg = dconfig.load(str(etc / "divertor/divertor.yaml"))
    assert cfg.api.listen == "127.0.0.1:9180"
    assert cfg.api.token_file == str(etc / "divertor/api.token")
    assert cfg.timeline.path == "/var/lib/divertor/timeline.sqlite"
    assert cfg.thresholds == str(etc / "divertor/thresholds.yaml")

    # again: configuration and token kept, stale source files gone, drop-in on demand
    (etc / "divertor/divertor.yaml").write_text("# edited by the NOC\n")
    (home / "stale_module.py").write_text("")
    done = _install(dest, "--plugin-exabgp")
    assert done.returncode == 0, done.stderr
    assert (etc / "divertor/divertor.yaml").read_text() == "# edited by the NOC\n"
    assert (etc / "divertor/api.token").read_text().strip() == token
    assert not (home / "stale_module.py").exists()
    assert not (dest / "opt/divertor.old").exists() and not (dest / "opt/divertor.new").exists()
    dropin = etc / "systemd/system/divertor.service.d/plugin-exabgp.conf"
    assert (
        dropin.read_bytes() == (PKG / "systemd/divertor.service.d/plugin-exabgp.conf").read_bytes()
    )
    assert _install(dest).returncode == 0
    assert not dropin.exists()


def test_cli_wrapper(tmp_path: Path) -> None:
    """/usr/local/bin/divertor: the installation's paths, the arguments passed on."""
    if (
        os.geteuid() == 0
        and subprocess.run(["id", "divertor"], capture_output=True).returncode == 0
    ):
        pytest.skip("a user divertor exists here: the wrapper would switch to it")
    stub = tmp_path / "divertor"
    stub.write_text('#!/bin/sh\necho "$DIVERTOR_CONFIG|$DIVERTOR_STORE|$*"\n')
    stub.chmod(0o755)
    wrapper = tmp_path / "wrapper"
    text = (PKG / "divertor-cli.sh").read_text()
    assert f"bin={HOME}/.venv/bin/divertor" in text
    wrapper.write_text(text.replace(f"{HOME}/.venv/bin/divertor", str(stub)))
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIVERTOR_")}
    done = subprocess.run(
        [str(wrapper), "incidents", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "/etc/divertor/divertor.yaml|/var/lib/divertor/timeline.sqlite|incidents list --json"
    )
    done = subprocess.run(
        [str(wrapper), "status"],
        capture_output=True,
        text=True,
        env={**env, "DIVERTOR_STORE": "/elsewhere.sqlite"},
        timeout=30,
    )
    assert done.stdout.strip().split("|")[1] == "/elsewhere.sqlite"


def test_install_help() -> None:
    done = subprocess.run(
        ["bash", str(PKG / "install.sh"), "--help"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and "--plugin-exabgp" in done.stdout
    assert "set -euo" not in done.stdout


def test_install_refuses_bad_use(tmp_path: Path) -> None:
    done = _install(tmp_path / "root", "--start")
    assert done.returncode == 2 and "DESTDIR" in done.stderr
    done = _install(tmp_path / "root", "--bogus")
    assert done.returncode == 2 and "unknown option" in done.stderr
    assert not (tmp_path / "root").exists()
