"""Directories and files that PHP executes: created so that only we can have placed them.

php-fpm runs whatever file a request names, so a directory we put PHP files in must be ours,
writable by no other user, and below directories no other user can rename or replace. The
pool's workers (``nobody`` or ``www-data``) must still be able to enter and read it. Files
are written under a random name with ``O_EXCL`` and moved into place with one rename, so a
reader sees either the old or the new content, as after an rsync deploy.

An existing directory is checked, never loosened: the tool does not chmod what it did not
create.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from opcache_guard.errors import ConfigError, GuardError


def _check_ancestors(directory: Path, what: str, error: type[GuardError]) -> None:
    """Check every existing parent: trusted owner, not writable by others, enterable."""
    euid = os.geteuid()
    for parent in reversed(directory.parents):
        try:
            info = parent.lstat()
        except FileNotFoundError:
            return
        mode = info.st_mode
        if stat.S_ISLNK(mode):
            resolved = parent.resolve()
            raise error(f"{what} {directory} is below {parent}, a symbolic link to {resolved}; "
                        f"use the real path {resolved}")
        if info.st_uid not in (0, euid):
            raise error(f"{what} {directory} is below {parent}, which belongs to uid "
                        f"{info.st_uid}; that user could swap the directory. Use a path whose "
                        "parents belong to root or to you")
        if mode & 0o022 and not mode & stat.S_ISVTX:
            raise error(f"{what} {directory} is below {parent}, which others can write "
                        f"(mode {stat.S_IMODE(mode):o}); use a path whose parents only root "
                        "or you can write")
        if not mode & 0o001:
            raise error(f"{what} {directory} is below {parent}, which other users cannot "
                        f"enter (mode {stat.S_IMODE(mode):o}), so php-fpm workers running as "
                        f"another user cannot read it; run chmod o+x {parent} or choose "
                        "another path")


def prepare_directory(directory: Path, what: str, error: type[GuardError] = ConfigError) -> None:
    """Create a directory for PHP files, or check an existing one; never loosen it.

    Arguments:
        directory: an absolute path.
        what: how errors name it, for example "probe script directory".
        error: the exception class to raise.

    Raises:
        error: the path is relative, a parent or the directory itself is untrusted, or the
            directory cannot be created.
    """
    if not directory.is_absolute():
        raise error(f"{what} {directory} is relative; give an absolute path")
    _check_ancestors(directory, what, error)
    missing = [directory, *directory.parents]
    missing = [path for path in missing if not os.path.lexists(path)]
    try:
        for path in reversed(missing):
            try:
                path.mkdir(mode=0o755)
            except FileExistsError:
                # Another probe of the same run created it first; it is checked below.
                continue
            # mkdir applies the umask; a directory we just created gets exactly 0755.
            os.chmod(path, 0o755)
        info = directory.lstat()
    except OSError as exc:
        raise error(f"cannot create the {what} {directory}: {exc.strerror}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise error(f"{what} {directory} is not a directory (or is a symbolic link); "
                    "use a real directory")
    if info.st_uid != os.geteuid():
        raise error(f"{what} {directory} belongs to uid {info.st_uid}, not to us (uid "
                    f"{os.geteuid()}); PHP would run files others placed there. Use a "
                    "directory you own")
    if info.st_mode & 0o022:
        raise error(f"{what} {directory} is writable by others (mode "
                    f"{stat.S_IMODE(info.st_mode):o}); run chmod 755 on it")
    if info.st_mode & 0o005 != 0o005:
        raise error(f"{what} {directory} cannot be read by other users (mode "
                    f"{stat.S_IMODE(info.st_mode):o}), so php-fpm workers running as another "
                    f"user cannot read it; run chmod 755 on it")


def write_php(path: Path, content: bytes | str, mtime: float) -> None:
    """Replace path with content and the given modification time, in one rename.

    The temporary file is created with O_EXCL beside the target, so nothing else can have
    placed it, and gets its mtime before the rename, so OPcache sees the new timestamp with
    the new content.
    """
    data = content.encode() if isinstance(content, str) else content
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, 0o644)
        os.utime(temporary, (mtime, mtime))
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
