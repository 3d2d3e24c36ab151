"""Relayed authentication, client TLS and SCRAM channel binding through pgml-server.

Authentication is the upstream's: pgml-server relays trust, md5 and SCRAM-SHA-256 exchanges on
the client's own upstream connection. Client TLS is pgml-server's own (--tls-cert/--tls-key).
Channel binding (SCRAM-SHA-256-PLUS) binds to the certificate of the TLS link the client sees,
which is pgml-server's, so it cannot reach the upstream: the matrix below checks what each
`channel_binding` setting does for client link × upstream link, TLS or not (docs/channel-binding.md).

The embedded upstream's PostgreSQL is built without OpenSSL; for an upstream that speaks TLS the
module starts a second cluster with the system's PostgreSQL binaries when they are installed.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
from pathlib import Path

import asyncpg
import psycopg
import pytest

from pgml_server.embedded import EmbeddedPostgres
from tests.fix_servers import ServerProcess

SCRAM, SCRAM_PW = "auth_scram", "scram secret"
MD5, MD5_PW = "auth_md5", "md5 secret"
TRUST = "auth_trust"
NOLOGIN = "auth_nologin"
SYSTEM_PG_BIN = Path("/usr/lib/postgresql/15/bin")

HBA = [
    f"host all {MD5} 127.0.0.1/32 md5",
    f"host all {TRUST} 127.0.0.1/32 trust",
    f"host all {NOLOGIN} 127.0.0.1/32 scram-sha-256",
    # auth_scram: the defaults' `host all all 127.0.0.1/32 scram-sha-256`
]


def create_roles(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for role in (SCRAM, MD5, TRUST, NOLOGIN):
            conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(f"CREATE ROLE {SCRAM} LOGIN PASSWORD '{SCRAM_PW}'")
        conn.execute(f"CREATE ROLE {NOLOGIN} NOLOGIN PASSWORD '{SCRAM_PW}'")
        conn.execute(f"CREATE ROLE {TRUST} LOGIN")
        conn.execute("SET password_encryption = 'md5'")
        conn.execute(f"CREATE ROLE {MD5} LOGIN PASSWORD '{MD5_PW}'")
        assert conn.execute("SELECT rolpassword LIKE 'md5%%' FROM pg_authid WHERE rolname = %s",
                            [MD5]).fetchone()[0]


def drop_roles(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)",
                     [[SCRAM, MD5, TRUST, NOLOGIN]])
        for role in (SCRAM, MD5, TRUST, NOLOGIN):
            conn.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture(scope="module")
def roles(upstream):
    original = list(upstream.extra_hba)
    upstream.set_hba(original + HBA)
    create_roles(upstream.dsn)
    yield
    upstream.set_hba(original)
    drop_roles(upstream.dsn)


@pytest.fixture(autouse=True)
def no_password_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    monkeypatch.delenv("PGSSLMODE", raising=False)
    monkeypatch.delenv("PGCHANNELBINDING", raising=False)


def conninfo(srv, user: str, password: str | None = None, **params: str) -> str:
    parts = {"host": srv.host, "port": str(srv.port), "user": user, "dbname": "postgres",
             "connect_timeout": "10", **params}
    if password is not None:
        parts["password"] = password
    return " ".join(f"{k}='{v}'" for k, v in parts.items())


def whoami(dsn: str) -> tuple[str, bool]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT current_user").fetchone()[0], conn.info.pgconn.ssl_in_use


def refused(dsn: str) -> str:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(dsn).close()
    return str(info.value)


def asyncpg_error(srv, user: str, password: str | None) -> asyncpg.PostgresError:
    async def main():
        with pytest.raises(asyncpg.PostgresError) as info:
            await asyncpg.connect(host=srv.host, port=srv.port, user=user, password=password,
                                  database="postgres", ssl=False)
        return info.value
    return asyncio.run(main())


# ---------------------------------------------------------------- authentication


def test_scram_md5_trust_through_the_server(roles, server):
    assert whoami(conninfo(server, SCRAM, SCRAM_PW)) == (SCRAM, False)
    assert whoami(conninfo(server, MD5, MD5_PW)) == (MD5, False)
    assert whoami(conninfo(server, TRUST)) == (TRUST, False)

    async def main():
        for user, pw in ((SCRAM, SCRAM_PW), (MD5, MD5_PW), (TRUST, None)):
            conn = await asyncpg.connect(host=server.host, port=server.port, user=user, password=pw,
                                         database="postgres")
            assert await conn.fetchval("SELECT current_user") == user
            assert await conn.fetchval("SELECT pgml.version()")
            await conn.close()
    asyncio.run(main())


def test_wrong_missing_password_and_nologin(roles, server):
    for user in (SCRAM, MD5):
        assert "password authentication failed" in refused(conninfo(server, user, "wrong"))
        err = asyncpg_error(server, user, "wrong")
        assert err.sqlstate == "28P01", err
        # libpq asks for a password it does not have and gives up on its own.
        assert "no password supplied" in refused(conninfo(server, user))
    err = asyncpg_error(server, NOLOGIN, SCRAM_PW)
    assert err.sqlstate == "28000", err
    assert "not permitted to log in" in refused(conninfo(server, NOLOGIN, SCRAM_PW))
    # The server is fine after the refusals.
    assert whoami(conninfo(server, SCRAM, SCRAM_PW))[0] == SCRAM


def test_psql_with_a_password(roles, server):
    env = {**os.environ, "PGPASSWORD": SCRAM_PW}
    out = subprocess.run(["psql", conninfo(server, SCRAM), "-At", "-c", "SELECT current_user",
                          "-c", "SELECT pgml.version()"],
                         capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{SCRAM}\n")
    env["PGPASSWORD"] = "wrong"
    out = subprocess.run(["psql", conninfo(server, SCRAM), "-Atc", "SELECT 1"],
                         capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode != 0 and "password authentication failed" in out.stderr


# ---------------------------------------------------------------- client TLS


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    crt, key = folder / "server.crt", folder / "server.key"
    if shutil.which("openssl"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    else:
        try:
            _cryptography_cert(crt, key)
        except ImportError:
            pytest.skip("neither the openssl CLI nor the cryptography package is available")
    return crt, key


def _cryptography_cert(crt: Path, key: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    pkey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pkey.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(pkey, hashes.SHA256()))
    crt.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(pkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))


@pytest.fixture(scope="module")
def tls_server(roles, upstream, cert, tmp_path_factory):
    crt, key = cert
    srv = ServerProcess(upstream.dsn, "--tls-cert", str(crt), "--tls-key", str(key),
                        log_path=tmp_path_factory.mktemp("tls-server") / "server.log")
    yield srv
    srv.stop()


def test_tls_sslmode_require_and_verify_full(tls_server, cert):
    crt, _ = cert
    assert whoami(conninfo(tls_server, SCRAM, SCRAM_PW, sslmode="require")) == (SCRAM, True)
    assert whoami(conninfo(tls_server, "postgres", sslmode="require")) == ("postgres", True)
    assert whoami(conninfo(tls_server, MD5, MD5_PW, sslmode="prefer")) == (MD5, True)
    assert whoami(conninfo(tls_server, TRUST, sslmode="disable")) == (TRUST, False)
    for host in ("localhost", "127.0.0.1"):
        dsn = conninfo(tls_server, SCRAM, SCRAM_PW, sslmode="verify-full", sslrootcert=str(crt), host=host)
        assert whoami(dsn) == (SCRAM, True)
    # Another root does not verify pgml-server's certificate.
    other = Path(crt).with_name("other.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-keyout", str(other.with_suffix(".key")), "-out", str(other)],
                   check=True, capture_output=True)
    msg = refused(conninfo(tls_server, SCRAM, SCRAM_PW, sslmode="verify-full", sslrootcert=str(other)))
    assert "certificate verify failed" in msg


def test_tls_psql_asyncpg_and_cancel(tls_server, cert):
    crt, _ = cert
    env = {**os.environ, "PGPASSWORD": SCRAM_PW}
    out = subprocess.run(["psql", conninfo(tls_server, SCRAM, sslmode="require"), "-At",
                          "-c", "SELECT current_user", "-c", "SELECT pgml.version()", "-c", r"\conninfo"],
                         capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{SCRAM}\n")
    assert "SSL" in out.stdout, out.stdout

    async def main():
        ctx = ssl.create_default_context(cafile=str(crt))
        conn = await asyncpg.connect(host="localhost", port=tls_server.port, user=SCRAM, password=SCRAM_PW,
                                     database="postgres", ssl=ctx)
        assert conn.get_server_pid()
        assert await conn.fetchval("SELECT current_user") == SCRAM
        # A cancel over TLS (asyncpg opens a new connection with the same ssl settings).
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetchval("SELECT pg_sleep(30)", timeout=0.3)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    asyncio.run(main())

    # psycopg's conn.cancel() (libpq's encrypted cancel when the session uses TLS).
    import threading
    with psycopg.connect(conninfo(tls_server, SCRAM, SCRAM_PW, sslmode="require"), autocommit=True) as conn:
        t = threading.Timer(0.3, conn.cancel)
        t.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        t.join()
        assert conn.execute("SELECT 2").fetchone()[0] == 2


def test_server_without_certificate_refuses_ssl(roles, server):
    msg = refused(conninfo(server, SCRAM, SCRAM_PW, sslmode="require"))
    assert "does not support SSL" in msg
    assert whoami(conninfo(server, SCRAM, SCRAM_PW, sslmode="prefer")) == (SCRAM, False)
    assert whoami(conninfo(server, SCRAM, SCRAM_PW, sslmode="disable")) == (SCRAM, False)


# ---------------------------------------------------------------- channel binding


@pytest.fixture(scope="module")
def tls_upstream(cert, tmp_path_factory):
    """A second upstream with ssl=on, run by the system's PostgreSQL (built with OpenSSL)."""
    if not (SYSTEM_PG_BIN / "postgres").exists():
        pytest.skip("no PostgreSQL built with OpenSSL to act as a TLS upstream")
    crt, key = cert
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("tls-upstream") / "data", fast=True, hba=HBA)
    pg.bin_dir = SYSTEM_PG_BIN
    pg.start()
    try:
        for src, name in ((crt, "server.crt"), (key, "server.key")):
            dst = pg.data_dir / name
            shutil.copyfile(src, dst)
            if pg._run_as is not None:
                os.chown(dst, pg._run_as[1], pg._run_as[2])
            dst.chmod(0o600)
        with psycopg.connect(pg.dsn, autocommit=True, sslmode="disable") as conn:
            conn.execute("ALTER SYSTEM SET ssl = on")
        pg.reload()           # ssl is reloadable since PostgreSQL 10
        create_roles(pg.dsn)
        with psycopg.connect(pg.dsn, sslmode="require") as conn:
            assert conn.info.pgconn.ssl_in_use
    except Exception:
        pg.stop()
        raise
    yield pg
    pg.stop()


@pytest.fixture(scope="module")
def links(roles, upstream, tls_upstream, cert, tmp_path_factory):
    """pgml-servers with client TLS available, one per upstream link: plain and TLS."""
    crt, key = cert
    log = tmp_path_factory.mktemp("cb-servers")
    servers = {
        "plain": ServerProcess(upstream.dsn + "?sslmode=disable", "--tls-cert", str(crt), "--tls-key", str(key),
                               log_path=log / "plain.log"),
        "tls": ServerProcess(tls_upstream.dsn + "?sslmode=require", "--tls-cert", str(crt), "--tls-key", str(key),
                             log_path=log / "tls.log"),
    }
    yield servers
    for srv in servers.values():
        srv.stop()


OK = "ok"
# (client link, upstream link, channel_binding) → "ok" or a fragment of the error message.
MATRIX = {
    ("plain", "plain", "disable"): OK,
    ("plain", "plain", "prefer"): OK,
    ("plain", "plain", "require"): "channel binding required, but SSL not in use",
    ("plain", "tls", "disable"): OK,
    ("plain", "tls", "prefer"): OK,
    ("plain", "tls", "require"): "channel binding required, but SSL not in use",
    ("tls", "plain", "disable"): OK,
    ("tls", "plain", "prefer"): OK,        # the client says 'y' (it could bind, thinks we cannot): fine
    ("tls", "plain", "require"): "channel binding is required, but server did not offer an authentication "
                                 "method that supports channel binding",
    ("tls", "tls", "disable"): OK,
    # 'y' to an upstream that itself runs TLS and offers -PLUS reads as a downgrade attack there:
    # pgml-server stops the exchange first with a message that says what to do.
    ("tls", "tls", "prefer"): "SCRAM channel binding cannot pass through pgml-server",
    ("tls", "tls", "require"): "channel binding is required, but server did not offer an authentication "
                               "method that supports channel binding",
}


@pytest.mark.parametrize("client,upstream_link,binding", sorted(MATRIX))
def test_channel_binding_matrix(links, client, upstream_link, binding):
    srv = links[upstream_link]
    sslmode = "require" if client == "tls" else "disable"
    dsn = conninfo(srv, SCRAM, SCRAM_PW, sslmode=sslmode, channel_binding=binding)
    expected = MATRIX[(client, upstream_link, binding)]
    if expected == OK:
        assert whoami(dsn) == (SCRAM, client == "tls")
    else:
        msg = refused(dsn)
        assert expected in msg, msg
    # The server stays healthy whatever happened.
    assert whoami(conninfo(srv, TRUST, sslmode=sslmode))[0] == TRUST


@pytest.mark.parametrize("upstream_link", ["plain", "tls"])
def test_channel_binding_with_md5_trust_and_asyncpg(links, upstream_link):
    srv = links[upstream_link]
    # Methods without SCRAM never bind: prefer works, require is refused by libpq itself.
    for user, pw in ((MD5, MD5_PW), (TRUST, None)):
        assert whoami(conninfo(srv, user, pw, sslmode="require", channel_binding="prefer")) == (user, True)
        msg = refused(conninfo(srv, user, pw, sslmode="require", channel_binding="require"))
        assert "channel binding" in msg, msg

    # asyncpg never offers channel binding (gs2 header 'n'): SCRAM over TLS works on both links.
    async def main():
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = await asyncpg.connect(host=srv.host, port=srv.port, user=SCRAM, password=SCRAM_PW,
                                     database="postgres", ssl=ctx)
        assert await conn.fetchval("SELECT current_user") == SCRAM
        await conn.close()
    asyncio.run(main())


def test_tls_upstream_link_is_encrypted(links, tls_upstream):
    with psycopg.connect(conninfo(links["tls"], SCRAM, SCRAM_PW, sslmode="disable", channel_binding="disable"),
                         autocommit=True) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0] is True
    with psycopg.connect(conninfo(links["plain"], SCRAM, SCRAM_PW, sslmode="disable"), autocommit=True) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0] is False
