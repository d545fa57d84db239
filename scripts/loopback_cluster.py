#!/usr/bin/env python3
"""A two-host "cluster" on one machine: private OpenSSH servers on loopback addresses.

Multi-node launchers (DeepSpeed's pdsh runner, ``mpirun``) reach every host of the hostfile over
ssh. This starts one ``sshd`` of our own per address (127.0.0.2 and 127.0.0.3 by default: every
127/8 address is this machine, nothing needs configuring) on a free port, with host and client keys
made on the spot in a temporary directory, and writes

* ``hostfile``: ``127.0.0.2 slots=1`` / ``127.0.0.3 slots=1``;
* ``ssh_config`` (Port, User, IdentityFile, StrictHostKeyChecking no, UserKnownHostsFile /dev/null)
  and ``bin/ssh``, a wrapper running the real ssh with ``-F ssh_config``: ssh reads ``~/.ssh`` from
  the passwd entry's home, not ``$HOME``, so a private config has to be passed explicitly. Nothing
  under ``~/.ssh`` or ``/etc/ssh`` is read or changed. Put ``bin`` first on ``PATH``.

Where the kernel allows it (root, or user namespaces), each sshd runs in its own UTS namespace
with its own host name (``loopback-2``, ``loopback-3``), so ``hostname`` differs between the two
"hosts" as it does on a real cluster (DeepSpeed's MPI discovery counts ranks per host by host name).

    python scripts/loopback_cluster.py                  # start, print what to run, wait for Ctrl-C
    python scripts/loopback_cluster.py -- deepspeed --hostfile '{hostfile}' --master_addr 127.0.0.2 \\
        --module megagpt.pretrain --config ...          # run one command inside, then stop

In Python: ``with LoopbackCluster() as c:`` then ``c.env()`` for a subprocess environment,
``c.hostfile``, ``c.sessions()`` (every ssh session: the address it came in on and the command it
ran, noted by a ForceCommand wrapper before it runs the command) and ``c.accepted()`` (sshd's own
"Accepted publickey" log lines, LogLevel VERBOSE).

Run as root, sshd needs its privilege-separation directory ``/run/sshd``; it is created (empty,
mode 0755) when missing, as Debian's ssh service would.
"""
from __future__ import annotations

import argparse
import getpass
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOSTS = ("127.0.0.2", "127.0.0.3")


class ClusterError(RuntimeError):
    pass


def _sshd_path() -> str | None:
    for p in (shutil.which("sshd"), "/usr/sbin/sshd", "/usr/local/sbin/sshd"):
        if p and os.access(p, os.X_OK):
            return os.path.abspath(p)  # sshd re-executes itself and insists on an absolute path
    return None


def missing_tools(pdsh: bool = True) -> list[str]:
    """What a loopback launch needs that is not installed (Debian package, then programs)."""
    out = []
    if not _sshd_path():
        out.append("openssh-server (sshd)")
    if not shutil.which("ssh") or not shutil.which("ssh-keygen"):
        out.append("openssh-client (ssh, ssh-keygen)")
    if pdsh and not shutil.which("pdsh"):
        out.append("pdsh")
    return out


def _free_port(hosts) -> int:
    """A port free on every address (each address gets its own sshd on the same port)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        try:
            for h in hosts:
                with socket.socket() as s:
                    s.bind((h, port))
            return port
        except OSError:
            continue
    raise ClusterError("no port is free on all of " + ", ".join(hosts))


def _die_with_parent() -> None:
    """In each sshd child before exec: SIGTERM when the process that started it dies (Linux), so
    a killed test or CLI leaves no listener behind."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _uts_namespaces_work() -> bool:
    unshare = shutil.which("unshare")
    if not unshare:
        return False
    r = subprocess.run([unshare, "--uts", "sh", "-c", "hostname loopback-probe"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return r.returncode == 0


class LoopbackCluster:
    """One sshd per loopback address, a client config and an ssh wrapper that reaches them."""

    def __init__(self, hosts=HOSTS, slots: int = 1, workdir: str | Path | None = None,
                 record: bool = True, keep: bool = False, uts: bool | None = None):
        self.hosts = tuple(hosts)
        self.slots = slots
        self.record = record
        self.keep = keep
        self.uts = uts  # None: own host names where unshare --uts works
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir else None
        self.procs: dict[str, subprocess.Popen] = {}
        self.port: int | None = None
        self.actions: list[str] = []  # what was done, for the CLI's report

    # paths -------------------------------------------------------------------------------------
    @property
    def bin(self) -> Path:
        return self.dir / "bin"

    @property
    def hostfile(self) -> Path:
        return self.dir / "hostfile"

    @property
    def ssh_config(self) -> Path:
        return self.dir / "ssh_config"

    @property
    def session_log(self) -> Path:
        return self.dir / "sessions.log"

    def sshd_config(self, host: str) -> Path:
        return self.dir / f"sshd_config.{host}"

    def sshd_log(self, host: str) -> Path:
        return self.dir / f"sshd.{host}.log"

    def hostname(self, host: str) -> str:
        """The host name sshd (and everything started through it) sees on ``host``."""
        return f"loopback-{host.rsplit('.', 1)[-1]}" if self.uts else socket.gethostname()

    # lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> LoopbackCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> LoopbackCluster:
        missing = missing_tools(pdsh=False)
        if missing:
            raise ClusterError("not installed: " + ", ".join(missing))
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="loopback-cluster-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bin.mkdir(exist_ok=True)
        self.actions.append(f"working directory {self.dir}")
        try:
            self._keys()
            self._client_files()
            self._serve()
        except BaseException:
            self.stop()
            raise
        return self

    def _stop_servers(self) -> None:
        for proc in self.procs.values():  # the listeners; sessions that are still open live on
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = {}

    def stop(self) -> None:
        self._stop_servers()
        if self._own_dir and not self.keep and self.dir is not None and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    # setup -------------------------------------------------------------------------------------
    def _keygen(self, path: Path, comment: str) -> None:
        if not path.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                           check=True, stdout=subprocess.DEVNULL)

    def _keys(self) -> None:
        self._keygen(self.dir / "ssh_host_ed25519_key", "loopback-cluster host key")
        self._keygen(self.dir / "id_ed25519", "loopback-cluster client key")
        pub = (self.dir / "id_ed25519.pub").read_text().strip()
        # the client key is accepted only from loopback addresses
        (self.dir / "authorized_keys").write_text(f'from="127.0.0.0/8" {pub}\n')
        os.chmod(self.dir / "authorized_keys", 0o600)
        self.actions.append("generated an ed25519 host key and client key; authorized_keys holds the client key")

    def _client_files(self) -> None:
        ssh = shutil.which("ssh", path="/usr/bin:/bin:/usr/local/bin") or shutil.which("ssh")
        wrapper = self.bin / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(ssh)} -F {shlex.quote(str(self.ssh_config))} "$@"\n')
        wrapper.chmod(0o755)
        self.hostfile.write_text("".join(f"{h} slots={self.slots}\n" for h in self.hosts))
        self.session_log.write_text("")
        if self.record:
            rec = self.bin / "ssh-session"
            rec.write_text(
                "#!/bin/sh\n"
                "# sshd ForceCommand: note the address the session came in on and its command, then run it\n"
                'cmd=$(printf "%s" "${SSH_ORIGINAL_COMMAND:-<login shell>}" | tr "\\n\\t" "  ")\n'
                f'printf "%s\\t%s\\n" "$SSH_CONNECTION" "$cmd" >> {shlex.quote(str(self.session_log))}\n'
                'if [ -n "$SSH_ORIGINAL_COMMAND" ]; then exec "${SHELL:-/bin/sh}" -c "$SSH_ORIGINAL_COMMAND"; fi\n'
                'exec "${SHELL:-/bin/sh}" -l\n')
            rec.chmod(0o755)

    def _write_ssh_config(self) -> None:
        self.ssh_config.write_text(
            f"Host {' '.join(self.hosts)}\n"
            f"    Port {self.port}\n"
            f"    User {getpass.getuser()}\n"
            f"    IdentityFile {self.dir / 'id_ed25519'}\n"
            f"    IdentitiesOnly yes\n"
            f"    BatchMode yes\n"
            f"    StrictHostKeyChecking no\n"
            f"    UserKnownHostsFile /dev/null\n"
            f"    GlobalKnownHostsFile /dev/null\n"
            f"    LogLevel ERROR\n")
        self.actions.append(f"wrote {self.ssh_config}, the wrapper {self.bin / 'ssh'} (ssh -F ssh_config) "
                            f"and the hostfile {self.hostfile}")

    def _write_sshd_config(self, host: str) -> Path:
        lines = [f"Port {self.port}", f"ListenAddress {host}",
                 f"HostKey {self.dir / 'ssh_host_ed25519_key'}",
                 f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                 "PubkeyAuthentication yes", "PasswordAuthentication no",
                 "KbdInteractiveAuthentication no", "UsePAM no",
                 "StrictModes no",  # the temp dir sits under a world-writable /tmp
                 "PermitRootLogin prohibit-password", f"AllowUsers {getpass.getuser()}",
                 "PidFile none", "LogLevel VERBOSE", "MaxStartups 100", "MaxSessions 100"]
        if self.record:
            lines.append(f"ForceCommand {self.bin / 'ssh-session'}")
        path = self.sshd_config(host)
        path.write_text("\n".join(lines) + "\n")
        return path

    def _serve(self) -> None:
        if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
            self.actions.append("created /run/sshd (sshd's privilege-separation directory)")
        if self.uts is None:
            self.uts = _uts_namespaces_work()
            if not self.uts:
                self.actions.append("unshare --uts is not allowed here: both hosts keep this machine's "
                                    "host name (mpirun launches then fail DeepSpeed's local-rank check)")
        sshd = _sshd_path()
        last = ""
        for _ in range(3):
            self.port = _free_port(self.hosts)
            self._write_ssh_config()
            for host in self.hosts:
                cfg = self._write_sshd_config(host)
                test = subprocess.run([sshd, "-t", "-f", str(cfg)], capture_output=True, text=True)
                if test.returncode != 0:
                    raise ClusterError(f"sshd -t rejected {cfg}: {test.stderr.strip()}")
                log = self.sshd_log(host)
                log.write_text("")
                cmd = [sshd, "-D", "-f", str(cfg), "-E", str(log)]
                if self.uts:  # own host name: `sh -c 'hostname NAME && exec sshd ...'` in a new UTS namespace
                    cmd = [shutil.which("unshare"), "--uts", "sh", "-c", 'hostname "$0" && exec "$@"',
                           self.hostname(host), *cmd]
                self.procs[host] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True,
                                                    preexec_fn=_die_with_parent)
                self.actions.append(f"started {shlex.join(cmd)} (pid {self.procs[host].pid})")
            if self._wait_listening():
                self.actions.append(f"sshd listening on {', '.join(self.hosts)} port {self.port}"
                                    + (f", host names {', '.join(map(self.hostname, self.hosts))}"
                                       if self.uts else ""))
                return
            last = self.log()[-2000:]
            self._stop_servers()
        raise ClusterError(f"sshd did not start; its log:\n{last}")

    def _wait_listening(self, timeout: float = 10.0) -> bool:
        deadline = time.time() + timeout
        pending = set(self.hosts)
        while pending and time.time() < deadline:
            for h in list(pending):
                if self.procs[h].poll() is not None:
                    return False
                try:
                    with socket.create_connection((h, self.port), timeout=1) as s:
                        if s.recv(4).startswith(b"SSH-"):
                            pending.discard(h)
                except OSError:
                    pass
            if pending:
                time.sleep(0.1)
        return not pending

    # use ---------------------------------------------------------------------------------------
    def env(self, base: dict | None = None) -> dict:
        """``base`` (default: os.environ) with the ssh wrapper first on PATH."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', os.defpath)}"
        env["LOOPBACK_HOSTFILE"] = str(self.hostfile)
        return env

    def ssh(self, host: str, command: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / "ssh"), host, command], capture_output=True, text=True, **kw)

    def log(self) -> str:
        out = []
        for h in self.hosts:
            p = self.sshd_log(h)
            if p.exists():
                out += [f"[{h}] {line}" for line in p.read_text(errors="replace").splitlines()]
        return "\n".join(out)

    def accepted(self) -> list[str]:
        """sshd's 'Accepted publickey' lines, each prefixed with ``[address]`` of the sshd."""
        return [l for l in self.log().splitlines() if "Accepted publickey" in l]

    def sessions(self) -> list[dict]:
        """One entry per ssh session: client and server address/port (SSH_CONNECTION) and command."""
        out = []
        if self.session_log.exists():
            for line in self.session_log.read_text(errors="replace").splitlines():
                conn, _, cmd = line.partition("\t")
                parts = conn.split()
                if len(parts) == 4:
                    out.append({"client": parts[0], "client_port": int(parts[1]), "server": parts[2],
                                "server_port": int(parts[3]), "command": cmd})
        return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="After --, a command to run with the wrapper on PATH; '{hostfile}' "
                                        "in it becomes the hostfile's path ($LOOPBACK_HOSTFILE holds it too).")
    ap.add_argument("--dir", help="working directory (default: a new temporary one, removed on exit)")
    ap.add_argument("--hosts", nargs="+", default=list(HOSTS), help="loopback addresses (default: %(default)s)")
    ap.add_argument("--slots", type=int, default=1, help="slots per host in the hostfile (default: 1)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory on exit")
    ap.add_argument("--no-record", action="store_true", help="no ForceCommand session log")
    ap.add_argument("--no-uts", action="store_true", help="no UTS namespaces: one host name for all hosts")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    missing = missing_tools()
    if missing:
        print("warning: not installed: " + ", ".join(missing) + " (scripts/install.sh installs them)",
              file=sys.stderr)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop sshd on `kill` too
    cluster = LoopbackCluster(args.hosts, args.slots, args.dir, record=not args.no_record, keep=args.keep,
                              uts=False if args.no_uts else None)
    try:
        cluster.start()
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        for a in cluster.actions:
            print(f"loopback-cluster: {a}", flush=True)
        for h in cluster.hosts:
            r = cluster.ssh(h, "echo $(hostname) $SSH_CONNECTION", timeout=30)
            print(f"loopback-cluster: ssh {h} 'echo $(hostname) $SSH_CONNECTION' -> exit {r.returncode}: "
                  f"{r.stdout.strip()}" + (f" ({r.stderr.strip()})" if r.returncode else ""), flush=True)
        print(f"loopback-cluster: hostfile {cluster.hostfile}:")
        print("".join(f"    {l}\n" for l in cluster.hostfile.read_text().splitlines()), end="", flush=True)
        if command:
            command = [c.replace("{hostfile}", str(cluster.hostfile)) for c in command]
            print(f"loopback-cluster: running {shlex.join(command)}", flush=True)
            child = subprocess.Popen(command, env=cluster.env())
            try:
                rc = child.wait()
            except KeyboardInterrupt:
                child.terminate()
                rc = child.wait()
        else:
            print("loopback-cluster: in another shell (remote sessions start with a clean environment: "
                  "list what the ranks need in ./.deepspeed_env, NAME=value per line):\n"
                  f"    export PATH={cluster.bin}:$PATH\n"
                  f"    deepspeed --hostfile {cluster.hostfile} --master_addr {cluster.hosts[0]} "
                  "--module megagpt.pretrain --config ...\n"
                  "loopback-cluster: Ctrl-C stops sshd", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
            rc = 0
        sessions = cluster.sessions()
        print(f"loopback-cluster: {len(sessions)} ssh session(s) ({cluster.session_log}):")
        for s in sessions:
            print(f"    on {s['server']}:{s['server_port']} from {s['client']}: {s['command'][:160]}")
        print(f"loopback-cluster: sshd accepted {len(cluster.accepted())} publickey login(s) "
              f"(logs {cluster.dir}/sshd.*.log)")
        return rc
    finally:
        cluster.stop()
        print("loopback-cluster: sshd stopped" + (f", {cluster.dir} removed" if cluster._own_dir and not args.keep
                                                   else f", files kept in {cluster.dir}"), flush=True)


if __name__ == "__main__":
    sys.exit(main())
