"""Disk budget and cleanup of programs' private directories, at any depth.

A program controls the shape of its private directory: 3,000 nested directories made
a recursive `shutil.rmtree` raise RecursionError (and paths that long exceed PATH_MAX,
so path-based walks fail too). Both walks here go one directory at a time through
directory descriptors, keep only the names still to visit, never recurse and never
raise. They run in the worker after the program's process is gone (removal) or while
it runs (the usage scan of the watched quota, `_zygote.py`), never in the sandbox.
"""

from __future__ import annotations

import os
import stat

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(name: str, dir_fd: int | None) -> int | None:
    """Open a directory entry, making it searchable first if it is not (its owner may
    have created it with mode 0); None when that fails too."""
    for attempt in range(2):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except PermissionError:
            if attempt:
                return None
            try:
                os.chmod(name, 0o700, dir_fd=dir_fd)
            except OSError:
                return None
        except OSError:
            return None
    return None


def _clear_files(fd: int) -> list[str]:
    """Unlink every non-directory in directory `fd`; return the subdirectories' names."""
    subdirs = []
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.name)
                    else:
                        os.unlink(entry.name, dir_fd=fd)
                except OSError:
                    pass
    except OSError:
        pass
    return subdirs


def remove_tree(path: str) -> bool:
    """Delete `path` and everything below it; True when it is gone. Never raises.

    Depth-first with one open directory at a time: going down opens the child by name
    relative to the current directory, going up opens "..". Only the program's own
    (now dead) process could have moved directories meanwhile, so ".." is the parent
    the walk came from.
    """
    try:
        if not os.path.isdir(path) or os.path.islink(path):
            if os.path.lexists(path):
                os.unlink(path)
            return True
    except OSError:
        return not os.path.lexists(path)
    fd = _open_dir(path, None)
    if fd is None:
        return False
    names: list[str] = []             # the directory path from `path` down to `fd`
    todo: list[list[str]] = [_clear_files(fd)]  # per level: subdirectories left
    try:
        while True:
            if todo[-1]:
                name = todo[-1].pop()
                child = _open_dir(name, fd)
                if child is None:
                    continue
                os.close(fd)
                fd = child
                names.append(name)
                todo.append(_clear_files(fd))
                continue
            todo.pop()
            if not names:
                break
            parent = _open_dir("..", fd)
            if parent is None:
                break
            os.close(fd)
            fd = parent
            try:
                os.rmdir(names.pop(), dir_fd=fd)
            except OSError:
                pass
    except OSError:
        pass
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        os.rmdir(path)
    except OSError:
        pass
    return not os.path.lexists(path)


def over_budget(path: str, max_bytes: int, max_inodes: int) -> bool:
    """Whether the tree at `path` holds more than `max_bytes` allocated bytes or more
    than `max_inodes` files and directories (itself included). Stops counting as soon
    as a budget is passed; never raises (an unreadable tree counts as within budget)."""
    fd = _open_dir(path, None)
    if fd is None:
        return False
    used_bytes, inodes = 0, 1
    names: list[str] = []
    todo: list[list[str]] = []

    def scan(dir_fd: int) -> list[str]:
        nonlocal used_bytes, inodes
        subdirs = []
        try:
            with os.scandir(dir_fd) as entries:
                for entry in entries:
                    inodes += 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    used_bytes += st.st_blocks * 512
                    if stat.S_ISDIR(st.st_mode):
                        subdirs.append(entry.name)
                    if used_bytes > max_bytes or inodes > max_inodes:
                        break
        except OSError:
            pass
        return subdirs

    try:
        todo.append(scan(fd))
        while used_bytes <= max_bytes and inodes <= max_inodes:
            if todo[-1]:
                child = _open_dir(todo[-1].pop(), fd)
                if child is None:
                    continue
                os.close(fd)
                fd = child
                names.append("")
                todo.append(scan(fd))
                continue
            todo.pop()
            if not names:
                break
            parent = _open_dir("..", fd)
            if parent is None:
                break
            os.close(fd)
            fd = parent
            names.pop()
    except OSError:
        pass
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    return used_bytes > max_bytes or inodes > max_inodes
