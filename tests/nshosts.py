"""Separate "hosts" on one machine for the multi-host cluster test: Linux namespaces joined by a bridge.

Each host is a network namespace with its own address on a private test subnet (``10.200.0.0/24``),
attached by a veth pair to a bridge that lives in a namespace of its own (nothing is added to the
machine's own network namespace, so no traffic can leave the machine). Inside, the host's process 1
(``hosts/boot.sh``) runs in its own PID, mount and UTS namespaces: a ``ray stop`` there sees only that
host's processes, ``/tmp/ray`` and root's home are the host's own (the rest of the file system is the
machine's, so the same Python environment runs everywhere), ``/mnt`` is the storage every host
shares, and the host's sshd is what Ray's launcher logs into. Killing process 1 kills the whole host.

Every namespace is named ``rbpc<pid of the test process>-<role>``; :func:`remove_stale` removes those
of test processes that are gone (a test run that was killed), and :meth:`Hosts.close` stops the
processes of every namespace it made, by PID, before deleting the namespaces.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

PREFIX = "rbpc"
SUBNET = "10.200.0"
BOOT = Path(__file__).resolve().parent / "hosts" / "boot.sh"
TOOLS = ("ip", "unshare", "nsenter", "setsid", "ssh", "ssh-keygen", "rsync", "/usr/sbin/sshd")


def unavailable_reason() -> str | None:
    """Why hosts cannot be made here (not root, a tool missing, namespaces refused), or None."""
    if os.geteuid() != 0:
        return "needs root (network, PID and mount namespaces)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install -y iproute2 util-linux openssh-server rsync)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(PREFIX)]


def _remove_namespace(name: str) -> None:
    """SIGKILL every process in the network namespace ``name`` (by PID), then delete it."""
    for _ in range(50):
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _with_root_home(passwd: str, home: Path) -> str:
    """``passwd`` (the text of /etc/passwd) with root's home directory set to ``home``."""
    lines = []
    for line in passwd.splitlines():
        fields = line.split(":")
        if fields[0] == "root":
            fields[5] = str(home)
        lines.append(":".join(fields))
    return "\n".join(lines) + "\n"


def remove_stale() -> list[str]:
    """Remove the namespaces (and their processes) of earlier test processes that no longer exist."""
    stale = [name for name in _namespaces() if not Path(f"/proc/{name[len(PREFIX) :].split('-')[0]}").exists()]
    for name in stale:
        _remove_namespace(name)
    return stale


@dataclass
class Host:
    name: str  # the host name (also its namespace's role suffix)
    address: str  # its address on the test subnet
    folder: Path  # its home, Ray temp dir and sshd files
    launcher: subprocess.Popen | None = None  # ``ip netns exec ... unshare ...``: the host's parent

    @property
    def init_pid(self) -> int:
        """Process 1 of the host's PID namespace, as the machine sees it (the child of ``unshare``).

        Waits up to a minute for ``unshare`` to fork it: on a busy machine the first command sent to a
        host can come before that fork (a CI run failed so). Fails at once, with the host's boot log,
        when the launcher has ended (boot.sh failed or the host was killed).
        """
        assert self.launcher is not None
        children = Path(f"/proc/{self.launcher.pid}/task/{self.launcher.pid}/children")
        deadline = time.monotonic() + 60
        while self.launcher.poll() is None:
            forked = children.read_text().split()
            if forked:
                return int(forked[0])
            assert time.monotonic() < deadline, f"host {self.name}: unshare has not forked process 1 in 60 s"
            time.sleep(0.05)
        boot = (self.folder / "boot.log").read_text() if (self.folder / "boot.log").is_file() else ""
        raise AssertionError(f"host {self.name} has no process 1 (exit {self.launcher.returncode}): {boot}")


class Hosts:
    """``count`` hosts (the first is the head) with sshd running; use as a context manager.

    ``root`` is a folder of the test: per host ``<name>/home``, ``<name>/ray`` (its ``/tmp/ray``), and
    ``shared/`` (every host's ``/mnt``), ``id_ed25519`` (the key that logs in as root on every host).
    """

    def __init__(self, root: Path, count: int = 3) -> None:
        self.root = root
        self.tag = f"{PREFIX}{os.getpid()}"
        self.shared = root / "shared"
        self.key = root / "id_ed25519"
        self.hosts = [
            Host(f"{'head' if i == 0 else f'worker{i}'}", f"{SUBNET}.{i + 1}", root / f"host{i}") for i in range(count)
        ]
        self._made: list[str] = []

    def __enter__(self) -> Hosts:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def netns(self, host: Host) -> str:
        return f"{self.tag}-{host.name}"

    def _start(self) -> None:
        self.shared.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        bridge = f"{self.tag}-br"
        _ip("netns", "add", bridge)
        self._made.append(bridge)
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge, "link", "set", "br0", "up")
        for index, host in enumerate(self.hosts):
            ns = self.netns(host)
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("-n", bridge, "link", "add", f"v{index}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", bridge, "link", "set", f"v{index}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            self._boot(host)
        for host in self.hosts:
            self._wait_for_ssh(host)

    def _boot(self, host: Host) -> None:
        for sub in ("home", "ray", "etc"):
            (host.folder / sub).mkdir(parents=True, exist_ok=True)
        etc = host.folder / "etc"
        names = "".join(f"{other.address} {other.name}\n" for other in self.hosts)
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{names}")
        (etc / "resolv.conf").write_text("# no name server on the test subnet\n")
        (etc / "passwd").write_text(_with_root_home(Path("/etc/passwd").read_text(), self.home(host)))
        host_key = host.folder / "host_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        config = host.folder / "sshd_config"
        config.write_text(
            f"ListenAddress {host.address}\nHostKey {host_key}\nPidFile none\n"
            f"AuthorizedKeysFile {self.key}.pub\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nMaxStartups 50\nMaxSessions 50\n"
        )
        command = [
            "setsid",
            "ip",
            "netns",
            "exec",
            self.netns(host),
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "--uts",
            "--mount",
            "--propagation",
            "private",
            "--kill-child",
            "sh",
            str(BOOT),
            host.name,
            str(host.folder / "ray"),
            str(self.shared),
            str(etc),
            str(config),
        ]
        log = open(host.folder / "boot.log", "w")  # noqa: SIM115 (the host outlives this call)
        host.launcher = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def home(self, host: Host) -> Path:
        """Root's home directory on ``host`` (its own; the machine's /root stays as it is)."""
        return host.folder / "home"

    def ssh(self, host: Host) -> list[str]:
        """The ssh command line that logs into ``host`` from another host (run it with :meth:`run_on`)."""
        return [
            "ssh",
            "-i",
            str(self.key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            f"root@{host.address}",
        ]

    def _wait_for_ssh(self, host: Host, timeout: float = 300.0) -> None:
        """Until root can log into ``host`` from the head (generous: the machine may be busy)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                done = self.run_on(self.hosts[0], [*self.ssh(host), "hostname"], timeout=60, check=False)
                if done.returncode == 0 and done.stdout.strip() == host.name:
                    return
                reason = done.stderr
            except subprocess.TimeoutExpired:
                reason = "ssh timed out"
            boot = (host.folder / "boot.log").read_text()
            assert time.monotonic() < deadline, f"no sshd on {host.name}: {reason}\n{boot}"
            time.sleep(0.3)

    def run_on(
        self, host: Host, command: list[str], env: dict[str, str] | None = None, timeout: float = 120,
        check: bool = True, cwd: Path | None = None,
    ) -> subprocess.CompletedProcess:  # fmt: skip
        """Run ``command`` on ``host`` (inside all its namespaces), as a user logged in there would."""
        enter = ["nsenter", "-t", str(host.init_pid), "-n", "-m", "-u", "-p", f"--wd={cwd or self.root}"]
        done = subprocess.run([*enter, *command], env=env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert done.returncode == 0, f"{' '.join(command)} on {host.name}: {(done.stdout + done.stderr)[-4000:]}"
        return done

    def popen_on(self, host: Host, command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        """Start ``command`` on ``host`` in the background, output to ``log``; it dies with the host."""
        enter = ["nsenter", "-t", str(host.init_pid), "-n", "-m", "-u", "-p", f"--wd={self.root}"]
        with open(log, "w") as out:
            return subprocess.Popen([*enter, *command], env=env, stdout=out, stderr=subprocess.STDOUT)

    def processes(self, host: Host) -> list[str]:
        """Command lines of the processes running on ``host``."""
        pids = subprocess.run(["ip", "netns", "pids", self.netns(host)], capture_output=True, text=True).stdout
        lines = []
        for pid in pids.split():
            try:
                lines.append(" ".join(psutil.Process(int(pid)).cmdline()))
            except psutil.Error:
                pass  # ended meanwhile
        return lines

    def kill(self, host: Host) -> None:
        """Kill every process of ``host`` at once (its process 1), as if it lost power; its network stays."""
        os.kill(host.init_pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop every process of every host (by PID) and delete the namespaces; safe to call twice."""
        for name in reversed(self._made):
            _remove_namespace(name)
        self._made.clear()
        for host in self.hosts:
            if host.launcher is not None:
                if host.launcher.poll() is None:
                    host.launcher.kill()
                host.launcher.wait(timeout=30)
