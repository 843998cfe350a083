//! What the guest reports about itself: the cipher driver dm-crypt got and
//! whether the CPU offers AES-NI.

/// The highest-priority driver of algorithm `name` in `/proc/crypto`
/// text, with its priority (the one the kernel picks).
pub fn crypto_driver(proc_crypto: &str, name: &str) -> Option<(String, i64)> {
    let mut best: Option<(String, i64)> = None;
    for block in proc_crypto.split("\n\n") {
        let field = |key: &str| {
            block.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_owned())
            })
        };
        if field("name").as_deref() != Some(name) {
            continue;
        }
        let (Some(driver), Some(priority)) = (field("driver"), field("priority")) else {
            continue;
        };
        let Ok(priority) = priority.parse::<i64>() else {
            continue;
        };
        if best.as_ref().is_none_or(|(_, p)| priority > *p) {
            best = Some((driver, priority));
        }
    }
    best
}

/// Whether the first CPU in `/proc/cpuinfo` text has `flag`.
pub fn cpu_has_flag(cpuinfo: &str, flag: &str) -> bool {
    cpuinfo
        .lines()
        .find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == "flags").then_some(v)
        })
        .is_some_and(|flags| flags.split_whitespace().any(|f| f == flag))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRYPTO: &str = "\
name         : xts(aes)
driver       : xts(ecb(aes-generic))
module       : kernel
priority     : 100
type         : skcipher

name         : xts(aes)
driver       : xts-aes-vaes-avx2
module       : kernel
priority     : 600
type         : skcipher

name         : aes
driver       : aes-aesni
priority     : 300

name         : xts(aes)
driver       : xts-aes-aesni
module       : kernel
priority     : 401
";

    #[test]
    fn picks_the_highest_priority_driver() {
        assert_eq!(
            crypto_driver(CRYPTO, "xts(aes)"),
            Some(("xts-aes-vaes-avx2".to_owned(), 600))
        );
        assert_eq!(
            crypto_driver(CRYPTO, "aes"),
            Some(("aes-aesni".to_owned(), 300))
        );
        assert_eq!(crypto_driver(CRYPTO, "cbc(aes)"), None);
        assert_eq!(crypto_driver("", "xts(aes)"), None);
    }

    #[test]
    fn reads_cpu_flags() {
        let cpuinfo = "processor\t: 0\nmodel name\t: QEMU TCG CPU\nflags\t\t: fpu sse2 aes avx2\n\nprocessor\t: 1\nflags\t\t: fpu\n";
        assert!(cpu_has_flag(cpuinfo, "aes"));
        assert!(cpu_has_flag(cpuinfo, "avx2"));
        assert!(!cpu_has_flag(cpuinfo, "vaes"));
        assert!(!cpu_has_flag(cpuinfo, "ae"));
        assert!(!cpu_has_flag("processor : 0\n", "aes"));
    }
}
