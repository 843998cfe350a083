SUMMARY = "dstack-init, the guest's PID1"
DESCRIPTION = "Sets up the confidential VM, measures it into RTMR3, gets its \
keys, pulls the app's images and runs its compose services."
HOMEPAGE = "https://github.com/dstack-rs/dstack-rs"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# Built from the repository itself: dstack_workspace.bbclass says how, and
# dstack-init-crates.inc (generated from Cargo.lock) lists what.
DEPENDS += "libseccomp"
require dstack-init-crates.inc

inherit dstack_workspace deploy

# The guest profile of the workspace, as scripts/build-init builds it: size
# over speed, fat LTO, panic=abort (Cargo.toml says why).
BUILD_MODE = "--profile guest"
BUILD_DIR = "guest"

# Static, like the image build's x86_64-unknown-linux-musl binary: PID1
# loads nothing from the initramfs at run time. libseccomp is linked in
# statically from the recipe sysroot; the libseccomp crate's pkg-config
# probe stays off, as in scripts/build-init.
RUSTFLAGS += "-C target-feature=+crt-static -C link-arg=-Wl,--build-id=sha1"
export LIBSECCOMP_LINK_TYPE = "static"
export LIBSECCOMP_LIB_PATH = "${STAGING_LIBDIR}"
export LIBSECCOMP_NO_PKG_CONFIG = "1"

do_compile() {
    oe_cargo_build -p dstack-init --bin dstack-init
}

# The kernel runs /init from the initramfs (rdinit=/init on the command line).
do_install() {
    install -D -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/dstack-init ${D}/init
}

# The binary goes into the image as cargo linked it (the guest profile strips
# symbols already): its sha256 is what metadata.json records.
INHIBIT_PACKAGE_STRIP = "1"
INHIBIT_PACKAGE_DEBUG_SPLIT = "1"

FILES:${PN} = "/init"

# The build record `dstack image build` reads beside an init binary
# (scripts/build-init writes the same fields): how this one was compiled.
# The image's seal step checks it against /init and copies it into
# metadata.json. The lock recorded is the one the build used: the
# repository's, pruned to dstack-init's crates.
python do_deploy() {
    import hashlib, json, subprocess
    env = dict(os.environ, PATH=d.getVar("PATH"))
    def first_line(cmd):
        out = subprocess.run(cmd, shell=True, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True).stdout
        return (out.splitlines() or ["unknown"])[0]
    def sha256(path):
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    libdir = d.getVar("STAGING_LIBDIR")
    seccomp_version = "unknown"
    with open(os.path.join(libdir, "pkgconfig", "libseccomp.pc")) as f:
        for line in f:
            if line.startswith("Version:"):
                seccomp_version = line.split(":", 1)[1].strip()
    # musl's libc.so is its dynamic loader, which prints its version.
    musl = first_line("%s/libc.so 2>&1 | sed -n 's/^Version //p'" % libdir)
    c_toolchain = "\n".join([first_line("${CC} --version"), first_line("${LD} --version"), "musl " + musl])
    rustc = subprocess.run(["rustc", "-vV"], env=env, stdout=subprocess.PIPE, check=True, text=True).stdout.strip()
    record = {
        "init_sha256": sha256(os.path.join(d.getVar("D"), "init")),
        "build": {
            "rustc": rustc,
            "cargo": first_line("cargo -V"),
            "cargo_lock_sha256": sha256(os.path.join(d.getVar("S"), "Cargo.lock")),
            "target": d.getVar("RUST_HOST_SYS"),
            "profile": "guest",
            "libseccomp_version": seccomp_version,
            "libseccomp_sha256": sha256(os.path.join(libdir, "libseccomp.a")),
            "c_toolchain": d.expand(c_toolchain),
        },
    }
    with open(os.path.join(d.getVar("DEPLOYDIR"), "dstack-init.build.json"), "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
}
addtask deploy after do_install before do_build
