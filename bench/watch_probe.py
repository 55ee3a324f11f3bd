#!/usr/bin/env python3
"""inotify against fanotify (FAN_REPORT_DFID_NAME, one mark per file system) for
watching a large tree: what each costs to set up, and what a file-system-wide mark
delivers when processes write elsewhere on the same file system. Linux only; run as
root (fanotify with FAN_MARK_FILESYSTEM needs CAP_SYS_ADMIN). The numbers and the
decision they led to are in docs/PERFORMANCE.md ("Watching: inotify limits, fanotify").

    python3 bench/watch_probe.py [DIRS] [OTHER_WRITES] [BASE]

DIRS directories are made in a temporary tree under BASE (default /tmp), watched with
one inotify watch each, then with one fanotify file-system mark; OTHER_WRITES files
are then written *outside* the tree, on the same file system, and the events each
watcher had to read are counted.
"""

import ctypes
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time

libc = ctypes.CDLL(None, use_errno=True)
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_MASK = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
IN_NONBLOCK = 0o4000
FAN_CLASS_NOTIF, FAN_NONBLOCK = 0x0, 0x2
FAN_REPORT_DFID_NAME = 0x00000C00  # FAN_REPORT_DIR_FID | FAN_REPORT_NAME
FAN_MARK_ADD, FAN_MARK_FILESYSTEM = 0x1, 0x100
FAN_MODIFY, FAN_ATTRIB, FAN_CLOSE_WRITE = 0x2, 0x4, 0x8
FAN_MOVED_FROM, FAN_MOVED_TO, FAN_CREATE, FAN_DELETE = 0x40, 0x80, 0x100, 0x200
FAN_ONDIR = 0x40000000
FAN_MASK = FAN_MODIFY | FAN_ATTRIB | FAN_CLOSE_WRITE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_CREATE | FAN_DELETE | FAN_ONDIR
AT_FDCWD = -100

libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]


def drain(fd):
    """Bytes of events waiting on a non-blocking notification fd, read until empty."""
    total = 0
    while select.select([fd], [], [], 0.2)[0]:
        try:
            b = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not b:
            break
        total += len(b)
    return total


def count_fanotify(fd):
    n = 0
    while select.select([fd], [], [], 0.2)[0]:
        try:
            b = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        off = 0
        while off + 24 <= len(b):
            (event_len,) = struct.unpack_from("I", b, off)
            n += 1
            off += event_len
    return n


def count_inotify(fd):
    n = 0
    while select.select([fd], [], [], 0.2)[0]:
        try:
            b = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        off = 0
        while off + 16 <= len(b):
            _, _, _, ln = struct.unpack_from("iIII", b, off)
            n += 1
            off += 16 + ln
    return n


def main():
    dirs = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    writes = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    base = sys.argv[3] if len(sys.argv) > 3 else "/tmp"
    work = tempfile.mkdtemp(prefix="watch-probe-", dir=base)
    tree, other = os.path.join(work, "tree"), os.path.join(work, "other")
    os.makedirs(other)
    for i in range(dirs):
        os.makedirs(os.path.join(tree, f"d{i // 1000:03d}", f"e{i % 1000:03d}"))
    paths = [tree] + [os.path.join(tree, a) for a in sorted(os.listdir(tree))]
    paths += [os.path.join(p, b) for p in paths[1:] for b in sorted(os.listdir(p))]
    print(f"tree: {len(paths)} directories under {work}")

    # inotify: one watch per directory.
    ino = libc.inotify_init1(IN_NONBLOCK)
    t = time.perf_counter()
    for p in paths:
        if libc.inotify_add_watch(ino, p.encode(), IN_MASK) < 0:
            err = ctypes.get_errno()
            print(f"inotify: add_watch failed after some watches: {os.strerror(err)}")
            break
    dt = time.perf_counter() - t
    print(f"inotify: {len(paths)} watches in {dt * 1000:.0f} ms ({dt / len(paths) * 1e6:.1f} us each)")

    # fanotify: one mark for the whole file system.
    fan = libc.fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK | FAN_REPORT_DFID_NAME, os.O_RDONLY)
    if fan < 0:
        print(f"fanotify_init: {os.strerror(ctypes.get_errno())} (needs CAP_SYS_ADMIN)")
        fan = None
    else:
        t = time.perf_counter()
        r = libc.fanotify_mark(fan, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_MASK, AT_FDCWD, tree.encode())
        dt = time.perf_counter() - t
        if r < 0:
            print(f"fanotify_mark FILESYSTEM: {os.strerror(ctypes.get_errno())}")
            fan = None
        else:
            print(f"fanotify: one file-system mark in {dt * 1e6:.0f} us")
    drain(ino)
    if fan is not None:
        drain(fan)

    # Writes elsewhere on the same file system.
    t = time.perf_counter()
    for i in range(writes):
        with open(os.path.join(other, f"f{i}"), "wb") as f:
            f.write(b"x")
    dt = time.perf_counter() - t
    print(f"{writes} files written outside the tree in {dt * 1000:.0f} ms")
    print(f"inotify: {count_inotify(ino)} events to read for them")
    if fan is not None:
        print(f"fanotify: {count_fanotify(fan)} events to read for them (each to be matched against the tree)")
        os.close(fan)
    os.close(ino)

    # In a user namespace (a container without CAP_SYS_ADMIN on the host).
    probe = (
        "import ctypes,os;l=ctypes.CDLL(None,use_errno=True);"
        "l.fanotify_mark.argtypes=[ctypes.c_int,ctypes.c_uint,ctypes.c_uint64,ctypes.c_int,ctypes.c_char_p];"
        f"fd=l.fanotify_init({FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME},0);"
        "e=lambda: os.strerror(ctypes.get_errno());"
        "print('fanotify_init in a user namespace:', 'ok' if fd>=0 else e());"
        f"r=l.fanotify_mark(fd,{FAN_MARK_ADD | FAN_MARK_FILESYSTEM},{FAN_MASK},{AT_FDCWD},{tree.encode()!r}) if fd>=0 else -1;"
        "print('file-system mark in a user namespace:', 'ok' if r>=0 else e())"
    )
    r = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c", probe],
                       capture_output=True, text=True)
    print((r.stdout + r.stderr).strip())
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
