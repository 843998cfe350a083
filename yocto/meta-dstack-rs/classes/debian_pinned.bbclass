# A Debian binary package pinned in the repository's reproducible/inputs.lock,
# fetched by URL and checked against the lock's sha256: the same bytes
# `dstack image build` downloads with apt. The recipe names the package and
# what the archive's pool path needs (its source package and architecture);
# version and hash come from the lock alone, so the two builds cannot name
# different inputs. The .deb unpacks into ${UNPACKDIR}/debian.
#
#   DEBIAN_PINNED_PACKAGE = "ovmf"
#   DEBIAN_PINNED_SOURCE = "edk2"
#   DEBIAN_PINNED_ARCH = "all"
#   inherit debian_pinned

# Debian drops a superseded version from its pool within days; a builder
# whose pin is gone points this at a snapshot of the archive (the sha256 is
# what is trusted, not the mirror).
DEBIAN_ARCHIVE ?= "https://deb.debian.org/debian"

DEBIAN_PINNED_ARCH ??= "all"
DEBIAN_PINNED_VERSION = "${@dstack_debian_pin(d)['version']}"
DEBIAN_PINNED_SHA256 = "${@dstack_debian_pin(d)['sha256']}"
DEBIAN_PINNED_URL = "${@dstack_debian_url(d)}"

SRC_URI += "${DEBIAN_PINNED_URL};name=debian;subdir=debian"
SRC_URI[debian.sha256sum] = "${DEBIAN_PINNED_SHA256}"

def dstack_debian_pin(d):
    import dstack.reproducible
    src = d.getVar("DSTACK_SRC_DIR")
    # A change to the lock must reparse the recipe.
    bb.parse.mark_dependency(d, os.path.join(src, "reproducible", "inputs.lock"))
    name = d.getVar("DEBIAN_PINNED_PACKAGE")
    pins = dstack.reproducible.pinned_packages(src)
    if name not in pins:
        bb.fatal("%s is not pinned in reproducible/inputs.lock" % name)
    return pins[name]

def dstack_debian_url(d):
    import dstack.reproducible
    pin = dstack_debian_pin(d)
    return dstack.reproducible.debian_pool_url(d.getVar("DEBIAN_ARCHIVE"), d.getVar("DEBIAN_PINNED_SOURCE"),
                                               d.getVar("DEBIAN_PINNED_PACKAGE"), pin["version"],
                                               d.getVar("DEBIAN_PINNED_ARCH"))
