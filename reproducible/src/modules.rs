//! The kernel modules the guest loads, in the order it must load them.
//!
//! The guest has no modprobe and no modules.dep: dstack-init reads
//! `/lib/modules/<release>/load-order` and `finit_module`s each listed path
//! (relative to that directory) in turn. The order is computed here, at
//! build time, from each module's own `.modinfo` (`depends=`, written by the
//! kernel build, and `softdep=` `pre:` entries), so no host tool such as
//! depmod is involved and only the needed modules are ever decompressed.
//! Modules are stored decompressed so that loading needs no decompressor.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::BufReader;
use std::path::Path;

use goblin::elf::Elf;

use crate::error::BuildError;

/// The modules the guest needs, each with why; their dependencies are added
/// automatically. Things the Debian cloud kernel builds in (=y) are not
/// listed: virtio core and PCI transport, ext4 with jbd2, mbcache, crc16 and
/// crc32c, the AES and ECB ciphers. tdx_guest refuses to load (ENODEV)
/// outside a TDX guest; init must treat that as "not on TDX".
pub(crate) const WANTED: &[(&str, &str)] = &[
    ("vsock", "host API and guest control over vsock"),
    (
        "vmw_vsock_virtio_transport_common",
        "virtio vsock transport",
    ),
    ("vmw_vsock_virtio_transport", "virtio vsock device driver"),
    ("failover", "needed by net_failover"),
    ("net_failover", "needed by virtio_net"),
    ("virtio_net", "guest network"),
    ("virtio_blk", "data disk"),
    ("overlay", "container root filesystems"),
    ("dm_mod", "device mapper, for the encrypted data disk"),
    ("dm_crypt", "encrypted data disk"),
    // Without a modprobe helper the kernel cannot load crypto templates on
    // demand, so the one LUKS2's default cipher (aes-xts-plain64) needs is
    // loaded up front.
    ("xts", "aes-xts-plain64 for dm_crypt"),
    ("tsm", "configfs-tsm quote interface"),
    ("tdx_guest", "TDX quotes and RTMR extension"),
    // The ACPI power button reaches PID1 as an input event: QEMU's
    // system_powerdown (the supervisor's fallback stop) needs both.
    ("button", "ACPI power button"),
    ("evdev", "input events for the power button"),
];

/// A module of the image: where it goes and its decompressed bytes.
#[derive(Debug)]
pub(crate) struct Module {
    /// Path relative to `/lib/modules/<release>/`, without `.xz`.
    pub(crate) path: String,
    /// The module, decompressed.
    pub(crate) data: Vec<u8>,
}

/// The wanted modules and their dependencies from the kernel package's
/// `lib/modules/<release>` directory, in load order.
pub(crate) fn resolve(modules_dir: &Path, release: &str) -> Result<Vec<Module>, BuildError> {
    let index = index_modules(modules_dir)?;
    let mut loaded: HashMap<String, Module> = HashMap::new();
    let wanted: Vec<&str> = WANTED.iter().map(|(name, _)| *name).collect();
    let order = load_order(&wanted, |name| {
        let rel = index.get(name).ok_or_else(|| BuildError::ModuleMissing {
            name: name.to_owned(),
        })?;
        let file = modules_dir.join(rel);
        let data = read_module(&file)?;
        let info = ModInfo::parse(&file, &data)?;
        if !info.vermagic.starts_with(&format!("{release} ")) {
            return Err(BuildError::Elf {
                path: file,
                reason: format!("built for kernel {:?}, not {release}", info.vermagic),
            });
        }
        // Soft dependencies are optional (modprobe skips what it cannot
        // find); built-in ones need no loading.
        let mut deps = info.depends;
        deps.extend(info.soft_pre.into_iter().filter(|d| index.contains_key(d)));
        loaded.insert(
            name.to_owned(),
            Module {
                path: decompressed_path(rel).to_owned(),
                data,
            },
        );
        Ok(deps)
    })?;
    order
        .iter()
        .map(|name| {
            loaded
                .remove(name)
                .ok_or_else(|| BuildError::ModuleMissing { name: name.clone() })
        })
        .collect()
}

/// Module names in the order to load them: each after all it depends on,
/// each once, ties in the order of `wanted` and of each dependency list, so
/// the result is fully determined by the inputs. `deps_of` is asked once
/// per module.
pub(crate) fn load_order(
    wanted: &[&str],
    mut deps_of: impl FnMut(&str) -> Result<Vec<String>, BuildError>,
) -> Result<Vec<String>, BuildError> {
    struct Walk<F> {
        deps_of: F,
        done: HashSet<String>,
        visiting: HashSet<String>,
        order: Vec<String>,
    }
    impl<F: FnMut(&str) -> Result<Vec<String>, BuildError>> Walk<F> {
        fn visit(&mut self, name: &str) -> Result<(), BuildError> {
            if self.done.contains(name) {
                return Ok(());
            }
            if !self.visiting.insert(name.to_owned()) {
                return Err(BuildError::ModuleCycle {
                    name: name.to_owned(),
                });
            }
            for dep in (self.deps_of)(name)? {
                self.visit(&normalize(&dep))?;
            }
            self.visiting.remove(name);
            self.done.insert(name.to_owned());
            self.order.push(name.to_owned());
            Ok(())
        }
    }
    let mut walk = Walk {
        deps_of: &mut deps_of,
        done: HashSet::new(),
        visiting: HashSet::new(),
        order: Vec::new(),
    };
    for name in wanted {
        walk.visit(&normalize(name))?;
    }
    Ok(walk.order)
}

/// The kernel treats `-` and `_` in module names alike and reports `_`.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The name a module file defines: `kernel/drivers/md/dm-mod.ko.xz` →
/// `dm_mod`.
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = &file[..file.find(".ko")?];
    (!stem.is_empty()).then(|| normalize(stem))
}

/// Every `.ko` / `.ko.xz` under `dir`, by module name, as paths relative to
/// `dir`.
fn index_modules(dir: &Path) -> Result<BTreeMap<String, String>, BuildError> {
    let mut index = BTreeMap::new();
    let mut pending = vec![String::from("kernel")];
    while let Some(rel) = pending.pop() {
        let host = dir.join(&rel);
        for entry in fs::read_dir(&host).map_err(BuildError::read(&host))? {
            let entry = entry.map_err(BuildError::read(&host))?;
            let Some(file) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let child = format!("{rel}/{file}");
            let kind = entry.file_type().map_err(BuildError::read(entry.path()))?;
            if kind.is_dir() {
                pending.push(child);
            } else if (file.ends_with(".ko") || file.ends_with(".ko.xz"))
                && let Some(name) = module_name(&child)
            {
                index.insert(name, child);
            }
        }
    }
    Ok(index)
}

/// What a module's `.modinfo` section says about loading it.
#[derive(Debug, Default, PartialEq, Eq)]
struct ModInfo {
    depends: Vec<String>,
    soft_pre: Vec<String>,
    vermagic: String,
}

impl ModInfo {
    fn parse(path: &Path, module: &[u8]) -> Result<Self, BuildError> {
        let bad = |reason: String| BuildError::Elf {
            path: path.to_owned(),
            reason,
        };
        let elf = Elf::parse(module).map_err(|e| bad(e.to_string()))?;
        let section = elf
            .section_headers
            .iter()
            .find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(".modinfo"))
            .ok_or_else(|| bad("no .modinfo section".into()))?;
        let bytes = usize::try_from(section.sh_offset)
            .ok()
            .zip(usize::try_from(section.sh_size).ok())
            .and_then(|(start, len)| module.get(start..start.checked_add(len)?))
            .ok_or_else(|| bad(".modinfo lies outside the file".into()))?;
        Ok(Self::from_section(bytes))
    }

    /// Parses NUL-separated `key=value` strings.
    fn from_section(bytes: &[u8]) -> Self {
        let mut info = Self::default();
        for entry in bytes.split(|b| *b == 0) {
            let Ok(entry) = std::str::from_utf8(entry) else {
                continue;
            };
            if let Some(list) = entry.strip_prefix("depends=") {
                info.depends
                    .extend(list.split(',').filter(|s| !s.is_empty()).map(normalize));
            } else if let Some(spec) = entry.strip_prefix("softdep=") {
                // "pre: a b post: c": only "pre:" modules must come first.
                let mut pre = false;
                for word in spec.split_whitespace() {
                    match word {
                        "pre:" => pre = true,
                        "post:" => pre = false,
                        name if pre => info.soft_pre.push(normalize(name)),
                        _ => {}
                    }
                }
            } else if let Some(v) = entry.strip_prefix("vermagic=") {
                v.clone_into(&mut info.vermagic);
            }
        }
        info
    }
}

/// The path a module is stored at in the image: the package path without
/// its compression suffix.
pub(crate) fn decompressed_path(path: &str) -> &str {
    path.strip_suffix(".xz").unwrap_or(path)
}

/// Reads a module file, decompressing `.ko.xz`.
pub(crate) fn read_module(path: &Path) -> Result<Vec<u8>, BuildError> {
    let name = path.to_string_lossy();
    if name.ends_with(".ko") {
        return fs::read(path).map_err(BuildError::read(path));
    }
    if !name.ends_with(".ko.xz") {
        return Err(BuildError::Decompress {
            path: path.to_owned(),
            reason: "only .ko and .ko.xz modules are supported".into(),
        });
    }
    let file = fs::File::open(path).map_err(BuildError::read(path))?;
    let mut out = Vec::new();
    lzma_rs::xz_decompress(&mut BufReader::new(file), &mut out).map_err(|e| {
        BuildError::Decompress {
            path: path.to_owned(),
            reason: e.to_string(),
        }
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of the real 6.12 cloud kernel's dependencies (as
    /// `modinfo -F depends` prints them, dashes included).
    fn synthetic() -> BTreeMap<&'static str, Vec<String>> {
        let g: &[(&str, &[&str])] = &[
            ("vsock", &[]),
            ("vmw_vsock_virtio_transport_common", &["vsock"]),
            (
                "vmw_vsock_virtio_transport",
                &["vmw_vsock_virtio_transport_common", "vsock"],
            ),
            ("failover", &[]),
            ("net_failover", &["failover"]),
            ("virtio_net", &["net_failover"]),
            ("dm_mod", &[]),
            ("dm_crypt", &["dm-mod"]),
            ("configfs", &[]),
            ("tsm", &["configfs"]),
            ("tdx_guest", &["tsm"]),
        ];
        g.iter()
            .map(|(n, d)| (*n, d.iter().map(|s| (*s).to_owned()).collect()))
            .collect()
    }

    fn order(wanted: &[&str]) -> Result<Vec<String>, BuildError> {
        let g = synthetic();
        load_order(wanted, |name| {
            g.get(name)
                .cloned()
                .ok_or_else(|| BuildError::ModuleMissing {
                    name: name.to_owned(),
                })
        })
    }

    #[test]
    fn dependencies_come_first_and_once() {
        assert_eq!(
            order(&["tdx_guest", "virtio_net", "dm-crypt", "net_failover"]).unwrap(),
            [
                "configfs",
                "tsm",
                "tdx_guest",
                "failover",
                "net_failover",
                "virtio_net",
                "dm_mod",
                "dm_crypt"
            ]
        );
    }

    #[test]
    fn every_module_follows_all_its_dependencies() {
        let o = order(&["vmw_vsock_virtio_transport", "vsock"]).unwrap();
        assert_eq!(
            o,
            [
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport"
            ]
        );
        let g = synthetic();
        let all: Vec<&str> = g.keys().copied().collect();
        let o = order(&all).unwrap();
        for (name, deps) in &g {
            let at = o.iter().position(|n| n == name).unwrap();
            for d in deps {
                assert!(
                    o.iter().position(|n| *n == normalize(d)).unwrap() < at,
                    "{d} before {name}"
                );
            }
        }
    }

    #[test]
    fn each_module_is_asked_for_once() {
        let g = synthetic();
        let mut asked = Vec::new();
        load_order(
            &["virtio_net", "net_failover", "failover", "virtio_net"],
            |n| {
                asked.push(n.to_owned());
                Ok(g[n].clone())
            },
        )
        .unwrap();
        asked.sort();
        assert_eq!(asked, ["failover", "net_failover", "virtio_net"]);
    }

    #[test]
    fn unknown_module_and_cycles_are_named_errors() {
        assert!(matches!(
            order(&["ext4"]),
            Err(BuildError::ModuleMissing { name }) if name == "ext4"
        ));
        let cyclic = |n: &str| {
            Ok(vec![if n == "a" {
                "b".to_owned()
            } else {
                "a".to_owned()
            }])
        };
        assert!(matches!(
            load_order(&["a"], cyclic),
            Err(BuildError::ModuleCycle { .. })
        ));
    }

    #[test]
    fn modinfo_section_is_parsed() {
        let section = b"license=GPL\0depends=dm-mod,tsm\0softdep=pre: ecb crc32c post: x\0\
                        vermagic=6.12.117+deb12-cloud-amd64 SMP mod_unload modversions \0name=t\0";
        let info = ModInfo::from_section(section);
        assert_eq!(info.depends, ["dm_mod", "tsm"]);
        assert_eq!(info.soft_pre, ["ecb", "crc32c"]);
        assert!(info.vermagic.starts_with("6.12.117+deb12-cloud-amd64 "));
        assert_eq!(ModInfo::from_section(b"depends=\0"), ModInfo::default());
    }

    #[test]
    fn module_names_normalise_dashes_and_suffixes() {
        assert_eq!(
            module_name("kernel/drivers/md/dm-mod.ko.xz").as_deref(),
            Some("dm_mod")
        );
        assert_eq!(
            module_name("x/virtio_blk.ko").as_deref(),
            Some("virtio_blk")
        );
        assert_eq!(module_name("x/readme.txt"), None);
        assert_eq!(decompressed_path("kernel/a.ko.xz"), "kernel/a.ko");
        assert_eq!(decompressed_path("kernel/a.ko"), "kernel/a.ko");
    }

    #[test]
    fn xz_modules_are_decompressed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.ko.xz");
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &b"\x7fELF module"[..], &mut xz).unwrap();
        fs::write(&path, xz).unwrap();
        assert_eq!(read_module(&path).unwrap(), b"\x7fELF module");
        fs::write(&path, b"not xz").unwrap();
        assert!(matches!(
            read_module(&path),
            Err(BuildError::Decompress { .. })
        ));
    }

    #[test]
    fn index_finds_modules_by_name() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("kernel/drivers/md")).unwrap();
        fs::write(dir.path().join("kernel/drivers/md/dm-mod.ko.xz"), b"").unwrap();
        fs::write(dir.path().join("kernel/drivers/md/README"), b"").unwrap();
        let index = index_modules(dir.path()).unwrap();
        assert_eq!(index.len(), 1);
        assert_eq!(index["dm_mod"], "kernel/drivers/md/dm-mod.ko.xz");
    }
}
