"""What `dstack image build` pins, read from the repository's own files.

The recipes take the kernel source, the firmware and the engine pin from
reproducible/inputs.lock, and the kernel config fragments from the list
reproducible/src/kernel.rs compiles in, so the Yocto build cannot name
other inputs than the image build without a check noticing.
"""

import os
import re


def _blocks(text, header):
    """The `key = "value"` (and `key = number`) lines of each `header` table."""
    blocks = []
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            current = {} if line == header else None
            if current is not None:
                blocks.append(current)
            continue
        if current is None or not line or line.startswith("#"):
            continue
        match = re.match(r'^([a-z0-9_]+)\s*=\s*(?:"([^"]*)"|([0-9]+|true|false))$', line)
        if match:
            current[match.group(1)] = match.group(2) if match.group(2) is not None else match.group(3)
    return blocks


def pinned_packages(src_dir):
    """inputs.lock's [[package]] pins by name: version, sha256, size, role."""
    with open(os.path.join(src_dir, "reproducible", "inputs.lock")) as f:
        text = f.read()
    return {b["name"]: b for b in _blocks(text, "[[package]]")}


def pinned_role(src_dir, role):
    """The one pinned package with `role` (kernel-source, firmware, ...)."""
    found = [p for p in pinned_packages(src_dir).values() if p.get("role") == role]
    if len(found) != 1:
        raise ValueError("inputs.lock pins %d packages with role %s, expected one" % (len(found), role))
    return found[0]


def engine_reference(src_dir):
    """`repository@digest` of the container engine image, as `dstack image
    build` writes it to /etc/dstack/engine-image."""
    with open(os.path.join(src_dir, "reproducible", "inputs.lock")) as f:
        engine = _blocks(f.read(), "[engine]")
    if len(engine) != 1 or "repository" not in engine[0] or "digest" not in engine[0]:
        raise ValueError("inputs.lock has no [engine] repository and digest")
    return "%s@%s" % (engine[0]["repository"], engine[0]["digest"])


def kernel_fragments(src_dir):
    """The fragment file names in FRAGMENTS of reproducible/src/kernel.rs, in
    merge order (the order `allnoconfig` reads them in)."""
    with open(os.path.join(src_dir, "reproducible", "src", "kernel.rs")) as f:
        text = f.read()
    match = re.search(r"pub const FRAGMENTS: &\[Fragment\] = &\[(.*?)\];", text, re.DOTALL)
    if match is None:
        raise ValueError("FRAGMENTS not found in reproducible/src/kernel.rs")
    return re.findall(r'fragment!\("([^"]+)"\)', match.group(1))


def debian_pool_url(mirror, source, name, version, arch):
    """Where Debian's archive keeps a binary package: the pool path of its
    source package, the file named without the version's epoch."""
    prefix = source[:4] if source.startswith("lib") else source[0]
    plain = version.split(":", 1)[-1]
    return "%s/pool/main/%s/%s/%s_%s_%s.deb" % (mirror.rstrip("/"), prefix, source, name, plain, arch)
