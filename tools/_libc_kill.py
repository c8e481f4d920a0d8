"""A preloaded C library that kills a process at its k-th file event under chosen folders, native code included.

The training kill harness must also cut the saves that frameworks write
from native code (torch's zip writer, safetensors, libstdc++ streams), which
no Python hook sees.  :func:`build_kill_library` compiles the library below with the
system C compiler; a child started with :func:`kill_library_env` has its libc
calls ``open``/``openat``/``creat``/``fopen`` (creating), ``mkdir``,
``rename``, ``unlink``, ``rmdir``, and ``write``/``pwrite``/``writev``
intercepted for paths under the folders named in ``SHIPSLOG_KILL_ROOTS``:

* ``before`` mode counts creates (a file opened with ``O_CREAT`` or by a
  writing ``fopen``, a folder made), renames and removes, and kills the
  process with SIGKILL before the ``SHIPSLOG_KILL_AT``-th one runs;
* ``half`` mode counts writes to files under those folders and kills the
  process after writing half of the ``SHIPSLOG_KILL_AT``-th one's bytes.

``SHIPSLOG_KILL_AT`` 0 only counts; the child reads its count with
:func:`kill_library_events`.  Nothing outside those folders is counted or changed.
Linux and glibc only; :func:`build_kill_library` returns None where no C compiler is
found, and the harness falls back to its Python-level killers.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess

__all__ = ["build_kill_library", "kill_library_env", "kill_library_events"]

_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_ROOTS 8
static char roots[MAX_ROOTS][PATH_MAX];
static size_t root_len[MAX_ROOTS];
static int nroots = -1;
static int half_mode;
static long kill_at;
static long counted;

static void setup(void) {
    if (nroots >= 0) return;
    nroots = 0;
    const char *m = getenv("SHIPSLOG_KILL_MODE");
    half_mode = m != NULL && strcmp(m, "half") == 0;
    const char *k = getenv("SHIPSLOG_KILL_AT");
    kill_at = k ? atol(k) : 0;
    const char *r = getenv("SHIPSLOG_KILL_ROOTS");
    while (r && *r && nroots < MAX_ROOTS) {
        const char *end = strchr(r, ':');
        size_t n = end ? (size_t)(end - r) : strlen(r);
        if (n > 0 && n < PATH_MAX - 1) {
            memcpy(roots[nroots], r, n);
            roots[nroots][n] = 0;
            root_len[nroots] = n;
            nroots++;
        }
        r = end ? end + 1 : NULL;
    }
}

long shipslog_kill_events(void) { return __atomic_load_n(&counted, __ATOMIC_SEQ_CST); }

static int under(const char *full) {
    for (int i = 0; i < nroots; i++) {
        if (strncmp(full, roots[i], root_len[i]) == 0 && (full[root_len[i]] == '/' || full[root_len[i]] == 0)) return 1;
    }
    return 0;
}

/* Remove "." and ".." components and repeated slashes from an absolute path, in place. */
static void normalize(char *p) {
    char out[PATH_MAX];
    size_t starts[PATH_MAX / 2];
    int depth = 0;
    size_t len = 0;
    const char *c = p;
    while (*c) {
        while (*c == '/') c++;
        const char *end = c;
        while (*end && *end != '/') end++;
        size_t n = (size_t)(end - c);
        if (n == 0 || (n == 1 && c[0] == '.')) {
            /* nothing */
        } else if (n == 2 && c[0] == '.' && c[1] == '.') {
            if (depth > 0) len = starts[--depth];
        } else {
            starts[depth++] = len;
            out[len++] = '/';
            memcpy(out + len, c, n);
            len += n;
        }
        c = end;
    }
    if (len == 0) out[len++] = '/';
    out[len] = 0;
    memcpy(p, out, len + 1);
}

/* The absolute, normalized form of path (relative to dirfd); 0 when it cannot be formed. */
static int absolute(int dirfd, const char *path, char *out) {
    if (path == NULL) return 0;
    if (path[0] == '/') {
        if (strlen(path) >= PATH_MAX) return 0;
        strcpy(out, path);
        normalize(out);
        return 1;
    }
    char base[PATH_MAX];
    if (dirfd == AT_FDCWD) {
        if (getcwd(base, sizeof base) == NULL) return 0;
    } else {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t n = readlink(link, base, sizeof base - 1);
        if (n <= 0) return 0;
        base[n] = 0;
    }
    if (strlen(base) + 1 + strlen(path) >= PATH_MAX) return 0;
    snprintf(out, PATH_MAX, "%s/%s", base, path);
    normalize(out);
    return 1;
}

static int path_under(int dirfd, const char *path) {
    setup();
    if (nroots == 0) return 0;
    char full[PATH_MAX];
    return absolute(dirfd, path, full) && under(full);
}

static int fd_under(int fd) {
    setup();
    if (nroots == 0 || fd < 0) return 0;
    char link[64], target[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return 0;
    target[n] = 0;
    return target[0] == '/' && under(target);
}

static void die(void) { kill(getpid(), SIGKILL); }

/* Count one event of this mode's kind; nonzero when it is the one to die at. */
static int event(void) {
    long n = __atomic_add_fetch(&counted, 1, __ATOMIC_SEQ_CST);
    return kill_at > 0 && n == kill_at;
}

static void before(int kind_is_write, int dirfd, const char *path) {
    setup();
    if (half_mode || kind_is_write) return;
    if (path_under(dirfd, path) && event()) die();
}

#define REAL(name) static __typeof__(name) *real_##name; if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name)

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    REAL(open);
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    if (flags & O_CREAT) before(0, AT_FDCWD, path);
    return real_open(path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    REAL(open64);
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    if (flags & O_CREAT) before(0, AT_FDCWD, path);
    return real_open64(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
    REAL(openat);
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    if (flags & O_CREAT) before(0, dirfd, path);
    return real_openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    REAL(openat64);
    va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
    if (flags & O_CREAT) before(0, dirfd, path);
    return real_openat64(dirfd, path, flags, mode);
}

int creat(const char *path, mode_t mode) { REAL(creat); before(0, AT_FDCWD, path); return real_creat(path, mode); }
int creat64(const char *path, mode_t mode) { REAL(creat64); before(0, AT_FDCWD, path); return real_creat64(path, mode); }

static int fopen_creates(const char *mode) { return mode && (strchr(mode, 'w') || strchr(mode, 'a')); }

FILE *fopen(const char *path, const char *mode) {
    REAL(fopen);
    if (fopen_creates(mode)) before(0, AT_FDCWD, path);
    return real_fopen(path, mode);
}

FILE *fopen64(const char *path, const char *mode) {
    REAL(fopen64);
    if (fopen_creates(mode)) before(0, AT_FDCWD, path);
    return real_fopen64(path, mode);
}

int mkdir(const char *path, mode_t mode) { REAL(mkdir); before(0, AT_FDCWD, path); return real_mkdir(path, mode); }
int mkdirat(int dirfd, const char *path, mode_t mode) { REAL(mkdirat); before(0, dirfd, path); return real_mkdirat(dirfd, path, mode); }
int rename(const char *src, const char *dst) { REAL(rename); before(0, AT_FDCWD, src); return real_rename(src, dst); }
int renameat(int sfd, const char *src, int dfd, const char *dst) {
    REAL(renameat); before(0, sfd, src); return real_renameat(sfd, src, dfd, dst);
}
int renameat2(int sfd, const char *src, int dfd, const char *dst, unsigned int flags) {
    REAL(renameat2); before(0, sfd, src); return real_renameat2(sfd, src, dfd, dst, flags);
}
int unlink(const char *path) { REAL(unlink); before(0, AT_FDCWD, path); return real_unlink(path); }
int unlinkat(int dirfd, const char *path, int flags) { REAL(unlinkat); before(0, dirfd, path); return real_unlinkat(dirfd, path, flags); }
int rmdir(const char *path) { REAL(rmdir); before(0, AT_FDCWD, path); return real_rmdir(path); }

/* half mode: the k-th write under the roots writes half of its bytes, then the process dies. */
static size_t write_cut(int fd, size_t count) {
    setup();
    if (!half_mode || count == 0 || !fd_under(fd) || !event()) return 0;
    return count / 2 > 0 ? count / 2 : 1;
}

ssize_t write(int fd, const void *buf, size_t count) {
    REAL(write);
    size_t cut = write_cut(fd, count);
    if (cut) { real_write(fd, buf, cut); die(); }
    return real_write(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    REAL(pwrite);
    size_t cut = write_cut(fd, count);
    if (cut) { real_pwrite(fd, buf, cut, offset); die(); }
    return real_pwrite(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    REAL(pwrite64);
    size_t cut = write_cut(fd, count);
    if (cut) { real_pwrite64(fd, buf, cut, offset); die(); }
    return real_pwrite64(fd, buf, count, offset);
}

static void write_iov_half(int fd, const struct iovec *iov, int n, size_t cut, off_t offset, int positioned) {
    REAL(write); REAL(pwrite);
    for (int i = 0; i < n && cut > 0; i++) {
        size_t part = iov[i].iov_len < cut ? iov[i].iov_len : cut;
        ssize_t done = positioned ? real_pwrite(fd, iov[i].iov_base, part, offset) : real_write(fd, iov[i].iov_base, part);
        if (done <= 0) break;
        offset += done;
        cut -= (size_t)done;
    }
    die();
}

static size_t iov_total(const struct iovec *iov, int n) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += iov[i].iov_len;
    return total;
}

ssize_t writev(int fd, const struct iovec *iov, int n) {
    REAL(writev);
    size_t cut = write_cut(fd, iov_total(iov, n));
    if (cut) write_iov_half(fd, iov, n, cut, 0, 0);
    return real_writev(fd, iov, n);
}

ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t offset) {
    REAL(pwritev);
    size_t cut = write_cut(fd, iov_total(iov, n));
    if (cut) write_iov_half(fd, iov, n, cut, offset, 1);
    return real_pwritev(fd, iov, n, offset);
}
"""


def build_kill_library(folder: str) -> str | None:
    """Compile the library into ``folder``; its path, or None where no C compiler (``cc``/``gcc``) is found or it fails."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source = os.path.join(folder, "shipslog_kill.c")
    library = os.path.join(folder, "shipslog_kill.so")
    with open(source, "w", encoding="utf-8") as f:
        f.write(_SOURCE)
    done = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", library, source, "-ldl"],
                          capture_output=True, text=True, check=False)
    return library if done.returncode == 0 and os.path.exists(library) else None


def kill_library_env(env: dict[str, str], library: str, roots: list[str], mode: str, kill_at: int) -> dict[str, str]:
    """``env`` plus what a child needs to run under the library, killed at ``kill_at`` (0: only counted) of ``mode``."""
    if mode not in ("before", "half"):
        raise ValueError(f"mode is 'before' or 'half', got {mode!r}")
    preload = " ".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
    return {**env, "LD_PRELOAD": preload, "SHIPSLOG_KILL_ROOTS": ":".join(os.path.realpath(r) for r in roots),
            "SHIPSLOG_KILL_MODE": mode, "SHIPSLOG_KILL_AT": str(kill_at)}


def kill_library_events() -> int | None:
    """In a child started with :func:`kill_library_env`: the events counted so far; None when the library is not loaded."""
    for entry in os.environ.get("LD_PRELOAD", "").split():
        if entry.endswith("shipslog_kill.so"):
            counter = ctypes.CDLL(entry).shipslog_kill_events
            counter.restype = ctypes.c_long
            return int(counter())
    return None
