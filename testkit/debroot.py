"""A clean Debian root to install the .deb into, as a hospital machine without network would.

The root is made once by ``mmdebstrap`` from deb.debian.org (minbase: only the Essential and
Priority required packages) and kept as a tarball in the cache folder; each test unpacks a fresh
copy (a second or two) without apt's package lists, like a machine with no package source.
Commands run in it through ``chroot`` in a private mount namespace (its own /proc, /dev/shm,
/dev/pts) and, unless ``net=True``, a network namespace of their own: loopback only, no route out.
``start`` runs a command the way the systemd unit's ``[Service]`` section says (user, group,
environment file, capabilities), since systemd itself does not run in a chroot.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cache_dir() -> Path:
    """Where scripts/package.sh keeps wheels and the tests keep Debian roots."""
    default = Path.home() / ".cache" / "dicomproxy-package"
    return Path(os.environ.get("DICOMPROXY_PACKAGE_CACHE", default))


def root_tarball(suite: str) -> Path:
    """The cached minimal root of ``suite`` (mmdebstrap --variant=minbase: Essential and Priority
    required packages, what every Debian system has)."""
    key = hashlib.sha1(f"{suite} {MIRROR} minbase".encode()).hexdigest()[:12]
    tarball = cache_dir() / "roots" / f"{suite}-{key}.tar"
    if tarball.exists():
        return tarball
    tarball.parent.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_name(tarball.name + ".part")
    subprocess.run(
        ["mmdebstrap", "--variant=minbase", "--format=tar", suite, str(partial), MIRROR],
        check=True,
        capture_output=True,
        timeout=900,
    )
    partial.rename(tarball)
    return tarball


class DebianRoot:
    """An unpacked Debian root and the commands run in it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def unpack(cls, tarball: Path, path: Path) -> DebianRoot:
        path.mkdir(parents=True)
        subprocess.run(["tar", "-C", str(path), "-xf", str(tarball)], check=True)
        for lists in (path / "var" / "lib" / "apt" / "lists").glob("*_Packages*"):
            lists.unlink()  # no package source: apt installs only the .deb files it is given
        (path / "dev" / "shm").mkdir(exist_ok=True)
        return cls(path)

    def command(self, args: Sequence[str], *, net: bool = False) -> list[str]:
        """``args`` inside the root; ``net=False``: in a network namespace with loopback only."""
        root = shlex.quote(str(self.path))
        setup = [
            f"mount -t proc proc {root}/proc",
            f"mount -t tmpfs shm {root}/dev/shm",
            f"mount -t devpts -o newinstance,ptmxmode=0666 devpts {root}/dev/pts",
            *([] if net else ["ip link set lo up"]),
            f'exec chroot {root} "$@"',
        ]
        unshare = ["unshare", "--mount", *([] if net else ["--net"])]
        return [*unshare, "sh", "-c", " && ".join(setup), "sh", *args]

    @staticmethod
    def env() -> dict[str, str]:
        return {"PATH": _PATH, "LANG": "C.UTF-8", "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive"}

    def run(
        self, *args: str, net: bool = False, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.command(args, net=net),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=self.env(),
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{list(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def ids(self, name: str) -> tuple[int, int] | None:
        """(uid, gid) of a user of the root, or None."""
        for line in (self.path / "etc" / "passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name:
                return int(fields[2]), int(fields[3])
        return None

    def has_group(self, name: str) -> bool:
        return any(
            line.split(":")[0] == name for line in (self.path / "etc" / "group").read_text().splitlines()
        )

    def start(self, unit: str, log: Path) -> subprocess.Popen[bytes]:
        """The unit's ExecStart, as its User/Group with its EnvironmentFile, Environment and
        capabilities (CapabilityBoundingSet / AmbientCapabilities, NoNewPrivileges), no network."""
        service = _unit_service(self.path / unit.lstrip("/"))
        env = self.env()
        for assignment in shlex.split(service.get("Environment", "")):
            key, _, value = assignment.partition("=")
            env[key] = value
        env_file = service.get("EnvironmentFile", "").lstrip("-")
        if env_file:
            env.update(_read_env_file(self.path / env_file.lstrip("/")))
        caps = ",".join(
            "+" + cap.lower().removeprefix("cap_") for cap in service.get("AmbientCapabilities", "").split()
        )
        bounding = ",".join(
            "+" + cap.lower().removeprefix("cap_") for cap in service.get("CapabilityBoundingSet", "").split()
        )
        setpriv = [
            "setpriv",
            f"--reuid={service['User']}",
            f"--regid={service['Group']}",
            "--init-groups",
            *(["--no-new-privs"] if service.get("NoNewPrivileges") == "yes" else []),
            *([f"--bounding-set=-all,{bounding}"] if bounding else []),
            *([f"--inh-caps={caps}", f"--ambient-caps={caps}"] if caps else []),
            "--",
        ]
        with log.open("ab") as out:
            return subprocess.Popen(
                self.command([*setpriv, *shlex.split(service["ExecStart"])]),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )


def _unit_service(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path, encoding="utf-8")
    return dict(parser["Service"])


def _read_env_file(path: Path) -> dict[str, str]:
    """A systemd EnvironmentFile= of NAME=value lines (quotes removed as systemd does)."""
    env: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        env[key.strip()] = " ".join(shlex.split(value)) if value.strip() else ""
    return env
