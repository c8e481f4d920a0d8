"""Type-check every shipslog package with mypy (strict, configured in pyproject.toml).

Run it as ``make typecheck`` (or ``.venv/bin/python .ci/typecheck.py [mypy options]``).

The packages live in folders named after their last component (``shipslog.journal`` in
``journal/``, ``shipslog.gpu`` in ``gpu/``, ...: ``[tool.setuptools.package-dir]`` in
pyproject.toml), a mapping that mypy cannot follow.  So this lays the package out as it is
installed, under build/typecheck/ (removed and made again on every run; build/ is git-ignored),
out of symbolic links to the real folders and files::

    build/typecheck/shipslog/__init__.py -> ../../../shipslog/__init__.py
    build/typecheck/shipslog/journal     -> ../../../journal
    ...

runs ``mypy -p shipslog`` there, and prints each finding with the real file's path
(``journal/_fs.py:12: error: ...``).  The layout is read from package-dir, so a new package
there is checked without a change here; a subpackage inside a mapped folder (``engine/_workers/``)
comes through its folder's link.  The exit status is mypy's: 0 when there is no finding.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # mypy itself depends on tomli there
    import tomli as tomllib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TREE = os.path.join(REPO, "build", "typecheck")
TOP = "shipslog"


def package_dirs() -> dict[str, str]:
    """``{package: folder relative to the repository}`` from pyproject.toml."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {name: os.path.normpath(folder) for name, folder in mapping.items()}


def _link(target: str, link: str) -> None:
    os.symlink(os.path.relpath(target, os.path.dirname(link)), link)


def build_tree(dirs: dict[str, str]) -> dict[str, str]:
    """Lay out TREE; return ``{path in TREE: real path}`` (both relative) for every mapped folder."""
    shutil.rmtree(TREE, ignore_errors=True)
    os.makedirs(TREE)
    where: dict[str, str] = {}
    for name in sorted(dirs, key=lambda n: n.count(".")):  # parents before their subpackages
        src = os.path.join(REPO, dirs[name])
        rel = os.path.join(*name.split("."))
        dest = os.path.join(TREE, rel)
        where[rel] = dirs[name]
        if os.path.lexists(dest):  # reached through a parent's link: it has to be the same folder
            if os.path.realpath(dest) != os.path.realpath(src):
                sys.exit(f"typecheck: {name} is mapped to {dirs[name]}/, but its parent's folder holds another {rel}")
            continue
        parent = os.path.realpath(os.path.dirname(dest))
        if not os.path.isdir(parent) or os.path.commonpath([parent, os.path.realpath(TREE)]) != os.path.realpath(TREE):
            # Never write into the real folders: the parent has to be a directory made here.
            sys.exit(f"typecheck: cannot lay out {name} ({dirs[name]}/): its parent package is not mapped, or is a link")
        elsewhere = {
            child.rpartition(".")[2]
            for child in dirs
            if child.rpartition(".")[0] == name and dirs[child] != os.path.join(dirs[name], child.rpartition(".")[2])
        }
        if not elsewhere:  # the whole folder is the package, subpackages included
            _link(src, dest)
            continue
        # Some subpackages live in other folders: a real directory of links to this one's
        # entries, where each of those subpackages gets its own link (made in a later round).
        os.mkdir(dest)
        for entry in sorted(os.listdir(src)):
            if entry != "__pycache__" and entry not in elsewhere:
                _link(os.path.join(src, entry), os.path.join(dest, entry))
    return where


def main() -> int:
    where = build_tree(package_dirs())
    prefixes = sorted(where, key=len, reverse=True)  # shipslog/journal before shipslog

    def real(match: re.Match[str]) -> str:
        path = match.group(0)
        for prefix in prefixes:
            if path.startswith(prefix + os.sep):
                return os.path.normpath(os.path.join(where[prefix], path[len(prefix) + 1 :]))
        return path

    command = [
        sys.executable, "-m", "mypy",
        "--config-file", os.path.join(REPO, "pyproject.toml"),
        "--cache-dir", os.path.join(REPO, ".mypy_cache"),
        "-p", TOP,
        *sys.argv[1:],
    ]
    # The tree's folder comes first on mypy's search path, before the repository's own shipslog/.
    with subprocess.Popen(command, cwd=TREE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(re.sub(r"^[^:\s]+\.pyi?(?=:)", real, line))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
