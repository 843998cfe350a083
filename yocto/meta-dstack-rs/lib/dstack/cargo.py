"""The workspace's Cargo files as the Yocto build of one of its crates sees them.

A recipe builds one package of the workspace (dstack-init, or the image
tools) from a source tree holding only that package and the workspace crates
it depends on. Cargo resolves a whole workspace at once, so the recipe's
tree names just those crates as members and carries the Cargo.lock that
cargo prunes to them: the same versions and checksums as the repository's
lock, minus every package only other members use. yocto/scripts/gen-crates
computes both; the recipes apply them with `set_members`.
"""

import re

_MEMBERS = re.compile(r"^members\s*=\s*\[[^\]]*\]", re.MULTILINE)


def set_members(manifest, members):
    """The workspace manifest `manifest` (text) with its `members` replaced.

    Everything else (profiles, lints, workspace dependencies) is kept
    byte for byte: the guest profile that shapes the binary is the
    repository's own.
    """
    start = manifest.find("[workspace]")
    if start < 0:
        raise ValueError("no [workspace] table in the manifest")
    match = _MEMBERS.search(manifest, start)
    if match is None:
        raise ValueError("no members = [...] in the [workspace] table")
    listed = ", ".join('"%s"' % m for m in members)
    return manifest[: match.start()] + "members = [%s]" % listed + manifest[match.end():]


def lock_packages(text):
    """The [[package]] entries of a Cargo.lock, in file order, as dicts with
    name, version, and (when present) source and checksum."""
    packages = []
    current = None
    for line in text.splitlines():
        if line == "[[package]]":
            current = {}
            packages.append(current)
            continue
        if line.startswith("["):
            current = None
            continue
        if current is None:
            continue
        match = re.match(r'^(name|version|source|checksum) = "([^"]*)"$', line)
        if match:
            current[match.group(1)] = match.group(2)
    return packages


def crates_io(packages):
    """The packages that come from crates.io: (name, version, sha256)."""
    out = []
    for p in packages:
        if p.get("source") == "registry+https://github.com/rust-lang/crates.io-index":
            out.append((p["name"], p["version"], p["checksum"]))
    return out


def workspace_version(src_dir):
    """`version` of the repository's [workspace.package]: the crates' version."""
    import os
    with open(os.path.join(src_dir, "Cargo.toml")) as f:
        text = f.read()
    table = text.split("[workspace.package]", 1)[-1].split("\n[", 1)[0]
    match = re.search(r'^version\s*=\s*"([^"]+)"', table, re.MULTILINE)
    if match is None:
        raise ValueError("no version in [workspace.package] of Cargo.toml")
    return match.group(1)
