"""A throw-away PostgreSQL cluster from the OS's server binaries, for the tests.

``initdb`` into a fresh temporary folder, ``pg_ctl start`` on a free loopback port, password
(SCRAM) authentication over TCP; ``stop()`` removes everything. PostgreSQL refuses to run as
root, so as root (CI) the server runs as an unprivileged account through ``runuser``: ``nobody``
owns the cluster's folder. ``make test`` installs the server package when it is missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "postgres"
RUN_AS = "nobody"  # when the tests run as root


def server_bin() -> Path:
    """The newest installed server's ``bin`` folder (Debian keeps them under /usr/lib/postgresql)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError("no PostgreSQL server binaries (initdb): make test installs postgresql-15")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """One running server; :meth:`database` makes a fresh database with an owner role."""

    folder: Path
    port: int
    password: str
    bin: Path
    ca_file: Path  # the CA of the server's TLS certificate (for localhost and 127.0.0.1)
    host: str = "127.0.0.1"
    _databases: int = field(default=0, repr=False)

    def url(self, user: str = SUPERUSER, db: str = "postgres", **query: str) -> str:
        extra = "&".join(f"{k}={v}" for k, v in query.items())
        return f"postgresql://{user}@{self.host}:{self.port}/{db}" + (f"?{extra}" if extra else "")

    def admin(self, sql: str, db: str = "postgres") -> str:
        """Run SQL as the superuser with ``psql``; its output."""
        out = subprocess.run(
            [
                self.bin / "psql",
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.url(db=db),
                "-c",
                sql,
            ],
            env={**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"},
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def database(self, prefix: str = "sync") -> tuple[str, str, str]:
        """A new database owned by a new unprivileged login role: ``(url, user, password)``.

        The role has exactly what the README asks a DBA to grant: LOGIN, and ownership of (so
        CREATE in) its database. No superuser, no CREATEDB, no CREATEROLE.
        """
        self._databases += 1
        name = f"{prefix}_{self._databases}_{secrets.token_hex(3)}"
        password = secrets.token_urlsafe(12)
        self.admin(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        self.admin(f"CREATE DATABASE {name} OWNER {name}")
        self.admin(f"REVOKE ALL ON DATABASE {name} FROM PUBLIC")
        return self.url(name, name), name, password

    def stop(self) -> None:
        _as_owner(
            [str(self.bin / "pg_ctl"), "stop", "-D", str(self.folder / "data"), "-m", "immediate", "-w"]
        )
        shutil.rmtree(self.folder, ignore_errors=True)


def start_cluster() -> Cluster:
    """initdb + pg_ctl start; fsync off (a test cluster never survives a crash of the host)."""
    bin_dir = server_bin()
    folder = Path(tempfile.mkdtemp(prefix="sss-pg-"))
    password = secrets.token_urlsafe(16)
    (folder / "pw").write_text(password)
    if os.geteuid() == 0:
        account = pwd.getpwnam(RUN_AS)
        os.chown(folder, account.pw_uid, account.pw_gid)
        os.chown(folder / "pw", account.pw_uid, account.pw_gid)
    data = folder / "data"
    _as_owner(
        [
            str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--pwfile", str(folder / "pw"),
            "--auth-local=reject", "--auth-host=scram-sha-256", "--no-sync", "--no-locale", "-E", "UTF8",
        ]
    )  # fmt: skip
    (folder / "pw").unlink()
    ca_file = _tls(folder, data)
    port = free_port()
    options = (
        f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
        "-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
    )
    try:
        _as_owner(
            [
                str(bin_dir / "pg_ctl"),
                "start",
                "-D",
                str(data),
                "-w",
                "-t",
                "60",
                "-l",
                str(folder / "log"),
                "-o",
                options,
            ]
        )
    except subprocess.CalledProcessError:
        log = (folder / "log").read_text(errors="replace") if (folder / "log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start:\n{log[-2000:]}") from None
    return Cluster(folder, port, password, bin_dir, ca_file)


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    c = start_cluster()
    try:
        yield c
    finally:
        c.stop()


def _tls(folder: Path, data: Path) -> Path:
    """A CA and a server certificate for localhost/127.0.0.1 (clients may ask for TLS)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(data / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(data / "server.crt"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    for name in ("server.key", "server.crt"):
        os.chmod(data / name, 0o600)
        if os.geteuid() == 0:
            account = pwd.getpwnam(RUN_AS)
            os.chown(data / name, account.pw_uid, account.pw_gid)
    return folder / "ca.pem"


def _as_owner(argv: list[str]) -> None:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", RUN_AS, "--", *argv]
    subprocess.run(argv, check=True, capture_output=True, timeout=120, cwd="/")
