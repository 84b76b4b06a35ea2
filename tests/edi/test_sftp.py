"""The EDI service's SFTP door (services/edi/sftp.py): a real asyncssh client over real TCP against the server.

Keys are made here with asyncssh; each test starts its own server on a free port (port 0) over its own folder.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncssh
import pytest

from services.edi.sftp import (
    SFTP_BYTES,
    SFTP_CONNECTIONS,
    SFTP_LOGINS,
    SFTP_REFUSED_CONNECTIONS,
    SFTP_UPLOADS,
    SftpLimits,
    SftpServer,
)
from services.runtime import ConfigError

KEY_A = asyncssh.generate_private_key("ssh-ed25519")
KEY_B = asyncssh.generate_private_key("ssh-ed25519")
KEY_STRANGER = asyncssh.generate_private_key("ssh-ed25519")


def _public(key: asyncssh.SSHKey) -> str:
    return key.export_public_key().decode().strip()


def _door(tmp_path: Path, limits: SftpLimits | None = None) -> SftpServer:
    return SftpServer(tmp_path / "edi", {"acme": [_public(KEY_A)], "bravo": [_public(KEY_B)]},
                      host_key_path=tmp_path / "keys" / "host_ed25519", generate_host_key=True, limits=limits)


@asynccontextmanager
async def _running(tmp_path: Path, limits: SftpLimits | None = None) -> AsyncIterator[SftpServer]:
    door = _door(tmp_path, limits)
    await door.start()
    try:
        yield door
    finally:
        await door.close()


def _connect(door: SftpServer, user: str = "acme", key: asyncssh.SSHKey | None = KEY_A,
             **options: object) -> asyncssh.connection._ConnectionContextManager:  # type: ignore[name-defined]
    host_key = asyncssh.read_private_key(door._host_key_path).export_public_key()
    return asyncssh.connect("127.0.0.1", door.port, username=user, client_keys=[key] if key else None,
                            known_hosts=([asyncssh.import_public_key(host_key)], [], []), agent_path=None,
                            config=None, **options)


@asynccontextmanager
async def _sftp(door: SftpServer, user: str = "acme", key: asyncssh.SSHKey = KEY_A,
                version: int = 3) -> AsyncIterator[asyncssh.SFTPClient]:
    async with _connect(door, user, key) as conn, conn.start_sftp_client(sftp_version=version) as sftp:
        yield sftp


async def _eventually(check: Callable[[], bool], seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    assert check()


def _names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# -- uploads -------------------------------------------------------------------------------------------------------


async def test_an_upload_appears_under_its_name_only_after_a_clean_close(tmp_path: Path) -> None:
    async with _running(tmp_path) as door, _sftp(door) as sftp:
        inbox = door.partner_home("acme") / "in"
        bytes_in = SFTP_BYTES.labels("in")._value.get()
        async with sftp.open("/in/204_0001.edi", "wb") as remote:
            await remote.write(b"ISA*00*" + b"x" * 5000)
            [part] = _names(inbox)
            assert part.startswith(".204_0001.edi.") and part.endswith(".part")  # the poller skips dot files
        assert _names(inbox) == ["204_0001.edi"]
        assert (inbox / "204_0001.edi").read_bytes() == b"ISA*00*" + b"x" * 5000
        assert [n for n in await sftp.listdir("/in") if not n.startswith(".")] == ["204_0001.edi"]
        # put() works the usual way (relative names resolve against "/")
        local = tmp_path / "local.edi"
        local.write_bytes(b"ISA*second")
        await sftp.put(str(local), "in/204_0002.edi")
        assert (inbox / "204_0002.edi").read_bytes() == b"ISA*second"
        assert SFTP_BYTES.labels("in")._value.get() == bytes_in + 5007 + 10


async def test_an_upload_cut_off_leaves_no_file(tmp_path: Path) -> None:
    async with _running(tmp_path) as door:
        inbox = door.partner_home("acme") / "in"
        before = SFTP_UPLOADS.labels("aborted")._value.get()
        # The connection dropped mid-upload (TCP gone, no close).
        conn = await _connect(door)
        sftp = await conn.start_sftp_client()
        remote = await sftp.open("/in/cut.edi", "wb")
        await remote.write(b"ISA*half")
        await _eventually(lambda: len(_names(inbox)) == 1)
        conn.abort()
        await _eventually(lambda: _names(inbox) == [])
        # The SFTP channel closed with the file still open, the connection alive.
        async with _connect(door) as conn:
            sftp = await conn.start_sftp_client()
            remote = await sftp.open("/in/cut.edi", "wb")
            await remote.write(b"ISA*half")
            sftp.exit()
            await sftp.wait_closed()
            await _eventually(lambda: _names(inbox) == [])
        assert SFTP_UPLOADS.labels("aborted")._value.get() == before + 2


async def test_a_pending_name_is_never_overwritten(tmp_path: Path) -> None:
    async with _running(tmp_path) as door, _sftp(door, version=4) as sftp:
        inbox = door.partner_home("acme") / "in"
        async with sftp.open("/in/204.edi", "wb") as remote:
            await remote.write(b"first")
        with pytest.raises(asyncssh.SFTPFileAlreadyExists):
            await sftp.open("/in/204.edi", "wb")
        async with _sftp(door) as version3:  # no such code before version 4: a failure with the same words
            with pytest.raises(asyncssh.SFTPFailure, match="still waiting to be processed"):
                await version3.open("/in/204.edi", "wb")
        # Two uploads of one name at once: the first to close wins, the second is refused at its close.
        one, two = await sftp.open("/in/race.edi", "wb"), await sftp.open("/in/race.edi", "wb")
        await one.write(b"one")
        await two.write(b"two")
        await one.close()
        with pytest.raises(asyncssh.SFTPFileAlreadyExists):
            await two.close()
        # A rename within in/ (upload to a temporary name, then rename) never overwrites either.
        async with sftp.open("/in/next.tmp", "wb") as remote:
            await remote.write(b"next")
        with pytest.raises(asyncssh.SFTPFileAlreadyExists):
            await sftp.rename("/in/next.tmp", "/in/204.edi")
        with pytest.raises(asyncssh.SFTPFileAlreadyExists):
            await sftp.posix_rename("/in/next.tmp", "/in/204.edi")
        await sftp.rename("/in/next.tmp", "/in/next.edi")
        assert _names(inbox) == ["204.edi", "next.edi", "race.edi"]
        assert [(inbox / n).read_bytes() for n in _names(inbox)] == [b"first", b"next", b"one"]


async def test_an_oversize_upload_is_refused_and_removed(tmp_path: Path) -> None:
    async with _running(tmp_path, SftpLimits(max_file_bytes=1000)) as door, _sftp(door) as sftp:
        inbox = door.partner_home("acme") / "in"
        local = tmp_path / "big.edi"
        local.write_bytes(b"x" * 5000)
        with pytest.raises(asyncssh.SFTPFailure, match="at most 1000 bytes"):
            await sftp.put(str(local), "/in/big.edi")
        await _eventually(lambda: _names(inbox) == [])
        local.write_bytes(b"x" * 1000)  # the limit itself is fine
        await sftp.put(str(local), "/in/big.edi")
        assert _names(inbox) == ["big.edi"]


async def test_the_files_waiting_in_in_are_bounded(tmp_path: Path) -> None:
    async with _running(tmp_path, SftpLimits(max_pending_files=2)) as door, _sftp(door) as sftp:
        inbox = door.partner_home("acme") / "in"
        async with sftp.open("/in/1.edi", "wb") as remote:
            await remote.write(b"one")
        under_way = await sftp.open("/in/2.edi", "wb")  # an upload under way counts too
        with pytest.raises(asyncssh.SFTPFailure, match="2 files waiting"):
            await sftp.open("/in/3.edi", "wb")
        await under_way.close()
        os.unlink(inbox / "1.edi")  # the service took one
        async with sftp.open("/in/3.edi", "wb") as remote:
            await remote.write(b"three")
        assert _names(inbox) == ["2.edi", "3.edi"]


async def test_in_is_write_only(tmp_path: Path) -> None:
    async with _running(tmp_path) as door, _sftp(door) as sftp:
        (door.partner_home("acme") / "in" / "waiting.edi").write_bytes(b"ours now")
        with pytest.raises(asyncssh.SFTPError):
            await sftp.open("/in/waiting.edi", "rb")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.remove("/in/waiting.edi")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.open("/in/.hidden", "wb")
        assert (door.partner_home("acme") / "in" / "waiting.edi").read_bytes() == b"ours now"


# -- downloads -----------------------------------------------------------------------------------------------------


async def test_out_is_fetched_and_removed(tmp_path: Path) -> None:
    async with _running(tmp_path) as door, _sftp(door) as sftp:
        outbox = door.partner_home("acme") / "out"
        (outbox / "997_0001.edi").write_bytes(b"ISA*997" * 100_000)  # larger than one read
        (outbox / "990_0002.edi.tmp").write_bytes(b"in the making")
        (outbox / ".writing").write_bytes(b"in the making")
        assert [n for n in await sftp.listdir("/out") if n not in (".", "..")] == ["997_0001.edi"]
        await sftp.get("/out/997_0001.edi", str(tmp_path / "got.edi"))
        assert (tmp_path / "got.edi").read_bytes() == b"ISA*997" * 100_000
        with pytest.raises(asyncssh.SFTPNoSuchFile):
            await sftp.open("/out/990_0002.edi.tmp", "rb")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.open("/out/997_0001.edi", "ab")
        await sftp.remove("/out/997_0001.edi")
        assert _names(outbox) == [".writing", "990_0002.edi.tmp"]


async def test_openssh_sftp_works_as_a_partner(tmp_path: Path) -> None:
    """OpenSSH's sftp (SFTP version 3, what most TMS hosts script) against the door: put, list, get, rm, refusals."""
    sftp_command = shutil.which("sftp")
    if sftp_command is None:
        pytest.skip("OpenSSH's sftp not installed (Debian package openssh-client)")
    key_file = tmp_path / "partner_key"
    key_file.write_bytes(KEY_A.export_private_key())
    key_file.chmod(0o600)
    (tmp_path / "204.edi").write_bytes(b"ISA*204~")
    async with _running(tmp_path) as door:
        (door.partner_home("acme") / "out" / "997.edi").write_bytes(b"ISA*997~")
        known_hosts = tmp_path / "known_hosts"
        host_key = asyncssh.read_private_key(door._host_key_path).export_public_key().decode().strip()
        known_hosts.write_text(f"[127.0.0.1]:{door.port} {host_key}\n")
        batch = tmp_path / "batch"
        # "-" before a command: its failure does not end the batch
        batch.write_text("put 204.edi in/204.edi\n-put 204.edi in/204.edi\nls in\nget out/997.edi got.edi\n"
                         "rm out/997.edi\n-get ../../etc/passwd\n-mkdir in/sub\n-rm in/204.edi\n")
        process = await asyncio.create_subprocess_exec(
            sftp_command, "-b", str(batch), "-P", str(door.port), "-i", str(key_file), "-F", "/dev/null",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "acme@127.0.0.1", cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        output = (await asyncio.wait_for(process.communicate(), 30))[0].decode()
        assert process.returncode == 0, output
        assert 'dest open "/in/204.edi": Failure' in output  # the second put: the name is waiting
        assert "not found" in output and "Permission denied" in output
        assert _names(door.partner_home("acme") / "in") == ["204.edi"]
        assert (tmp_path / "got.edi").read_bytes() == b"ISA*997~"
        assert _names(door.partner_home("acme") / "out") == []


# -- logins --------------------------------------------------------------------------------------------------------


async def test_only_a_partners_own_key_logs_in(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with _running(tmp_path) as door:
        wrong = SFTP_LOGINS.labels("wrong_key")._value.get()
        unknown = SFTP_LOGINS.labels("unknown_partner")._value.get()
        with pytest.raises(asyncssh.PermissionDenied):
            await _connect(door, "acme", KEY_B)  # bravo's key is not acme's
        with pytest.raises(asyncssh.PermissionDenied):
            await _connect(door, "acme", KEY_STRANGER)
        with pytest.raises(asyncssh.PermissionDenied):
            await _connect(door, "nobody", KEY_A)
        with pytest.raises(asyncssh.PermissionDenied):  # no key at all, a password: not offered by the server
            await _connect(door, "acme", None, password="secret", preferred_auth="password,keyboard-interactive")
        assert SFTP_LOGINS.labels("wrong_key")._value.get() == wrong + 2
        assert SFTP_LOGINS.labels("unknown_partner")._value.get() == unknown + 1
        refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 3 and "'nobody'" in refusals[2]
        for message in refusals:  # the fingerprint only, never the key itself
            assert _public(KEY_B).split()[1] not in message and _public(KEY_A).split()[1] not in message
        async with _connect(door, "bravo", KEY_B) as conn:
            assert conn.get_extra_info("username") == "bravo"


async def test_no_shell_command_or_forwarding(tmp_path: Path) -> None:
    async with _running(tmp_path) as door, _connect(door) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.run("cat /etc/passwd", check=True)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_connection(asyncssh.SSHTCPSession, "127.0.0.1", door.port)
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", door.port)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_unix_connection(asyncssh.SSHUNIXSession, "/run/docker.sock")
        async with conn.start_sftp_client() as sftp:  # while SFTP works on the same connection
            assert sorted(await sftp.listdir("/")) == [".", "..", "in", "out"]


# -- the jail ------------------------------------------------------------------------------------------------------


async def test_nothing_outside_the_partners_folder_is_reachable(tmp_path: Path) -> None:
    async with _running(tmp_path) as door, _sftp(door) as sftp:
        home, other = door.partner_home("acme"), door.partner_home("bravo")
        (other / "out" / "secret.edi").write_bytes(b"bravo's")
        (other / "in" / "theirs.edi").write_bytes(b"bravo's")
        (home / "archive").mkdir()  # the service's own folders beside in/ and out/ stay hidden
        (home / "archive" / "old.edi").write_bytes(b"archived")
        outside = tmp_path / "outside.txt"
        outside.write_bytes(b"host file")
        assert sorted(await sftp.listdir("/")) == [".", "..", "in", "out"]
        assert await sftp.realpath("../../..") == "/"
        for path in ("../bravo/out/secret.edi", "/../bravo/out/secret.edi", "/bravo/out/secret.edi",
                     "/in/../../bravo/out/secret.edi", "/archive/old.edi", str(outside), "/etc/passwd",
                     "/out/../../../outside.txt"):
            with pytest.raises(asyncssh.SFTPError):
                await sftp.open(path, "rb")
            with pytest.raises(asyncssh.SFTPError):
                await sftp.stat(path)
        assert sorted(await sftp.listdir("/../..")) == [".", "..", "in", "out"]  # ".." stops at the jail's "/"
        for folder in ("../bravo", "/../bravo", "/bravo/in", "/archive", str(tmp_path), "/in/x", "/out/../../bravo"):
            with pytest.raises(asyncssh.SFTPError):
                await sftp.listdir(folder)
        for path in ("../bravo/in/x.edi", "/bravo/in/x.edi", "/x.edi", "/archive/x.edi", "/in/sub/x.edi",
                     str(tmp_path / "x.edi")):
            with pytest.raises(asyncssh.SFTPError):
                await sftp.open(path, "wb")
        with pytest.raises(asyncssh.SFTPError):
            await sftp.remove("../bravo/out/secret.edi")
        assert (other / "out" / "secret.edi").exists() and _names(other / "in") == ["theirs.edi"]
        assert [p for p, _, files in os.walk(tmp_path) if "x.edi" in files] == []


async def test_links_renames_and_attributes_cannot_leave_the_jail(tmp_path: Path) -> None:
    async with _running(tmp_path) as door, _sftp(door) as sftp:
        home = door.partner_home("acme")
        outside = tmp_path / "outside.txt"
        outside.write_bytes(b"host file")
        async with sftp.open("/in/mine.edi", "wb") as remote:
            await remote.write(b"mine")
        for link in (sftp.symlink(str(outside), "/in/link"), sftp.symlink("../../..", "/in/up"),
                     sftp.link("/in/mine.edi", "/in/hard"), sftp.readlink("/in/mine.edi"),
                     sftp.mkdir("/in/sub"), sftp.mkdir("/new"), sftp.rmdir("/out"),
                     sftp.rename("/in/mine.edi", "/out/mine.edi"), sftp.rename("/in/mine.edi", "../bravo/in/m.edi"),
                     sftp.rename("/in/mine.edi", "/mine.edi"), sftp.chmod("/in/mine.edi", 0o777),
                     sftp.truncate("/in/mine.edi", 0), sftp.chown("/in/mine.edi", 0, 0)):
            with pytest.raises(asyncssh.SFTPError):
                await link
        await sftp.utime("/in/mine.edi", (1, 1))  # times: accepted, not applied
        assert (home / "in" / "mine.edi").stat().st_mtime > 1
        assert (home / "in" / "mine.edi").read_bytes() == b"mine"
        assert stat.S_IMODE((home / "in" / "mine.edi").stat().st_mode) == 0o600
        # A link planted in the partner's folder (by anyone) is not followed, nor shown.
        (home / "out" / "leak.edi").symlink_to(outside)
        (home / "out" / "up").symlink_to(tmp_path)
        with pytest.raises(asyncssh.SFTPError):
            await sftp.open("/out/leak.edi", "rb")
        with pytest.raises(asyncssh.SFTPError):
            await sftp.listdir("/out/up")
        assert [n for n in await sftp.listdir("/out") if n not in (".", "..")] == []
        # a listing names the partner as the owner, never a local account
        assert next(n.longname for n in await sftp.readdir("/in") if n.filename == "mine.edi").split()[2] == "acme"


async def test_one_partner_cannot_see_another(tmp_path: Path) -> None:
    async with _running(tmp_path) as door:
        async with _sftp(door, "bravo", KEY_B) as sftp:
            async with sftp.open("/in/from_bravo.edi", "wb") as remote:
                await remote.write(b"bravo")
        async with _sftp(door, "acme", KEY_A) as sftp:
            assert [n for n in await sftp.listdir("/in") if n not in (".", "..")] == []
            with pytest.raises(asyncssh.SFTPError):
                await sftp.stat("/in/../../bravo/in/from_bravo.edi")
        assert _names(door.partner_home("bravo") / "in") == ["from_bravo.edi"]
        assert _names(door.partner_home("acme") / "in") == []


# -- bounds --------------------------------------------------------------------------------------------------------


async def test_the_connection_limit_holds(tmp_path: Path) -> None:
    async with _running(tmp_path, SftpLimits(max_connections=2)) as door:
        open_before, refused_before = SFTP_CONNECTIONS._value.get(), SFTP_REFUSED_CONNECTIONS._value.get()
        first, second = await _connect(door), await _connect(door)
        with pytest.raises((asyncssh.DisconnectError, ConnectionError)):
            await _connect(door)
        assert SFTP_CONNECTIONS._value.get() == open_before + 2
        assert SFTP_REFUSED_CONNECTIONS._value.get() == refused_before + 1
        first.close()
        await first.wait_closed()
        await _eventually(lambda: len(door._connections) == 1)
        async with _connect(door) as third:
            assert third.get_extra_info("username") == "acme"
        second.close()


async def test_sessions_per_connection_are_bounded(tmp_path: Path) -> None:
    async with _running(tmp_path, SftpLimits(max_sessions_per_connection=1)) as door, _connect(door) as conn:
        async with conn.start_sftp_client() as sftp:
            with pytest.raises((asyncssh.SFTPError, asyncssh.ChannelOpenError, ConnectionError)):
                async with conn.start_sftp_client() as extra:
                    await extra.listdir("/")
            assert "in" in await sftp.listdir("/")
        async with conn.start_sftp_client() as sftp:  # the first one ended: room again
            assert "out" in await sftp.listdir("/")


async def test_an_idle_connection_is_closed(tmp_path: Path) -> None:
    async with _running(tmp_path, SftpLimits(idle_timeout_seconds=0.4)) as door, _connect(door) as conn:
        sftp = await conn.start_sftp_client()
        for _ in range(4):  # busy: kept open past the timeout
            await sftp.listdir("/in")
            await asyncio.sleep(0.15)
        await asyncio.wait_for(conn.wait_closed(), 3)
        assert door._connections == set()


async def test_a_login_has_a_grace_time(tmp_path: Path) -> None:
    async with _running(tmp_path, SftpLimits(login_grace_seconds=0.3)) as door:
        reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
        await reader.readline()  # the server's SSH banner; then the client says nothing
        assert await asyncio.wait_for(reader.read(), 3) is not None  # closed by the server, not by the timeout
        writer.close()
        await _eventually(lambda: door._connections == set())


# -- start-up ------------------------------------------------------------------------------------------------------


async def test_the_host_key(tmp_path: Path) -> None:
    door = _door(tmp_path)
    await door.start()
    key_file = tmp_path / "keys" / "host_ed25519"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    async with _connect(door) as conn:  # the client checks the server's key against the file's
        assert conn.get_server_host_key().get_fingerprint() == asyncssh.read_private_key(key_file).get_fingerprint()
    await door.close()
    await door.start()  # a second start reads the same key
    await door.close()
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match="open to every user"):
        await _door(tmp_path).start()
    with pytest.raises(ConfigError, match="does not exist"):
        await SftpServer(tmp_path / "edi", {}, host_key_path=tmp_path / "missing").start()


async def test_partners_and_their_keys_are_checked(tmp_path: Path) -> None:
    key = tmp_path / "k"
    with pytest.raises(ConfigError, match="key 1 is not an OpenSSH public key"):
        SftpServer(tmp_path, {"acme": [_public(KEY_A), "ssh-ed25519 AAAAnotakey"]}, host_key_path=key)
    with pytest.raises(ConfigError, match="not a folder name"):
        SftpServer(tmp_path, {"../etc": [_public(KEY_A)]}, host_key_path=key)


async def test_parts_left_by_a_crash_are_removed_at_start(tmp_path: Path) -> None:
    inbox = tmp_path / "edi" / "acme" / "in"
    inbox.mkdir(parents=True)
    (inbox / ".204.edi.0123456789ab.part").write_bytes(b"half")
    (inbox / "204.edi").write_bytes(b"whole")
    async with _running(tmp_path):
        assert _names(inbox) == ["204.edi"]


async def test_a_new_partner_list_applies_at_once(tmp_path: Path) -> None:
    async with _running(tmp_path) as door:
        acme, bravo = await _connect(door, "acme", KEY_A), await _connect(door, "bravo", KEY_B)
        door.replace_authorized_keys({"bravo": [_public(KEY_B)], "charlie": [_public(KEY_A)]})
        await asyncio.wait_for(acme.wait_closed(), 3)  # acme is gone: its connection too
        with pytest.raises(asyncssh.PermissionDenied):
            await _connect(door, "acme", KEY_A)
        async with _sftp(door, "charlie", KEY_A) as sftp:  # a new partner, its folders made
            assert "in" in await sftp.listdir("/")
        async with bravo.start_sftp_client() as sftp:  # a partner whose key stays keeps its connection...
            assert "out" in await sftp.listdir("/")
            async with sftp.open("/in/during.edi", "wb") as remote:  # ...and its upload under way
                await remote.write(b"ISA")
                door.replace_authorized_keys({"bravo": [_public(KEY_B)]})
                await remote.write(b"*204")
        assert (door.partner_home("bravo") / "in" / "during.edi").read_bytes() == b"ISA*204"
        door.replace_authorized_keys({"bravo": [_public(KEY_STRANGER)]})  # bravo's key rotated
        await asyncio.wait_for(bravo.wait_closed(), 3)
        with pytest.raises(ConfigError):
            door.replace_authorized_keys({"bravo": ["not a key"]})
        async with _connect(door, "bravo", KEY_STRANGER):  # a refused list changed nothing
            pass
