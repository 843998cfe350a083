//! Pulling images with our registry client (`registry.rs`): registry
//! aliases, plain HTTP only for listed registries, a linux/amd64 pick from
//! multi-arch indexes, and a blob cache on the data disk. Every manifest,
//! config and layer is hashed here and compared with the digest that names it.

use std::io::Write;
use std::path::{Path, PathBuf};

use dstack_proto::host::RegistryAlias;
use oci_spec::distribution::Reference;
use oci_spec::image::ImageConfiguration;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::containers::ContainerError;
use crate::containers::registry::Registry;

/// Manifest media types we accept, image manifests and indexes, OCI and docker.
const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// What a manifest or index points at; the fields we use of both the OCI
/// and the docker (v2 schema 2) shapes, which agree on them.
#[derive(Debug, Deserialize)]
struct Descriptor {
    digest: String,
    size: u64,
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    os: String,
    architecture: String,
}

/// An image manifest (`config` and `layers`) or an index / manifest list
/// (`manifests`): told apart by which fields are there, as the media type
/// is optional in OCI manifests.
#[derive(Debug, Deserialize)]
struct Manifest {
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    manifests: Option<Vec<Descriptor>>,
}

/// A pulled image: what its reference resolved to and its parsed config.
#[derive(Debug, Clone)]
pub(crate) struct PulledImage {
    /// The digest the reference resolved to (the index's, for a multi-arch image).
    pub(crate) digest: String,
    /// Hex of the config digest: names the unpacked root.
    pub(crate) config_hex: String,
    /// The image config.
    pub(crate) config: ImageConfiguration,
    /// Cached layer blobs, lowest first (empty when the root is already unpacked).
    pub(crate) layers: Vec<PathBuf>,
}

/// Pulls images into `<images>/blobs/sha256/<hex>`.
pub(crate) struct Puller {
    registry: Registry,
    aliases: Vec<RegistryAlias>,
    blobs: PathBuf,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("blobs", &self.blobs)
            .finish()
    }
}

/// `sha256:<64 hex>` → the hex; anything else is refused, which also keeps a
/// hostile digest string from naming a path outside the cache.
pub(crate) fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A blob being written to the cache: hashed as it arrives, published by
/// rename only if it hashes to its digest.
pub(crate) struct BlobWriter {
    file: std::fs::File,
    hasher: Sha256,
    tmp: PathBuf,
    path: PathBuf,
    pub(crate) written: u64,
}

impl BlobWriter {
    /// Starts `<dir>/<hex>` (written to `<dir>/.tmp-<hex>` first).
    pub(crate) fn create(dir: &Path, hex: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".tmp-{hex}"));
        Ok(BlobWriter {
            file: std::fs::File::create(&tmp)?,
            hasher: Sha256::new(),
            tmp,
            path: dir.join(hex),
            written: 0,
        })
    }

    /// Appends bytes.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        self.file.write_all(bytes)
    }

    /// Checks the digest; on a match syncs and renames into place, otherwise
    /// deletes the temporary file and returns the digest that arrived.
    pub(crate) fn finish(self, expected: &str) -> Result<PathBuf, Result<String, std::io::Error>> {
        let actual = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        if actual != expected {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(Ok(actual));
        }
        self.file.sync_all().map_err(Err)?;
        std::fs::rename(&self.tmp, &self.path).map_err(Err)?;
        Ok(self.path)
    }
}

/// "1.2 MiB" for progress lines.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl Puller {
    /// A puller with the host's registry settings. `insecure` lists the
    /// registries (host:port after aliasing) that may be reached over HTTP.
    pub(crate) fn new(
        images_dir: &Path,
        aliases: Vec<RegistryAlias>,
        insecure: Vec<String>,
    ) -> Self {
        Puller {
            registry: Registry::new(insecure),
            aliases,
            blobs: images_dir.join("blobs/sha256"),
        }
    }

    /// The reference to fetch from: the registry replaced by its alias.
    pub(crate) fn fetch_reference(&self, image: &str) -> Result<Reference, ContainerError> {
        let reference: Reference =
            super::reference::parse(image).map_err(|source| ContainerError::InvalidReference {
                image: image.to_string(),
                source,
            })?;
        let Some(alias) = self.aliases.iter().find(|a| a.from == reference.registry()) else {
            return Ok(reference);
        };
        let (registry, repo) = (alias.to.clone(), reference.repository().to_string());
        Ok(match (reference.tag(), reference.digest()) {
            (Some(tag), Some(digest)) => {
                Reference::with_tag_and_digest(registry, repo, tag.into(), digest.into())
            }
            (None, Some(digest)) => Reference::with_digest(registry, repo, digest.into()),
            (tag, None) => Reference::with_tag(registry, repo, tag.unwrap_or("latest").into()),
        })
    }

    async fn manifest(
        &self,
        image: &str,
        reference: &Reference,
        what: &str,
    ) -> Result<(Manifest, String), ContainerError> {
        let cached = reference
            .digest()
            .and_then(sha256_hex)
            .map(|hex| self.blobs.join(hex));
        let bytes = match cached.as_ref().and_then(|path| std::fs::read(path).ok()) {
            Some(bytes) => bytes,
            None => self
                .registry
                .manifest(reference, &MANIFEST_TYPES)
                .await
                .map_err(|source| ContainerError::Registry {
                    image: image.into(),
                    what: what.into(),
                    source,
                })?,
        };
        let digest = sha256_digest(&bytes);
        if let Some(expected) = reference.digest()
            && expected != digest
        {
            return Err(ContainerError::DigestMismatch {
                image: image.into(),
                what: what.into(),
                expected: expected.into(),
                actual: digest,
            });
        }
        // Cached under its digest even when fetched by tag, so a later
        // reference pinned to that digest needs no network.
        if let Some(hex) = sha256_hex(&digest)
            && !self.blobs.join(hex).exists()
        {
            // Caching is an optimisation: a failure only costs a download next boot.
            let _ = BlobWriter::create(&self.blobs, hex)
                .and_then(|mut blob| blob.write(&bytes).map(|()| blob))
                .map(|blob| blob.finish(&digest));
        }
        let manifest = serde_json::from_slice(&bytes).map_err(|e| ContainerError::BadImage {
            image: image.into(),
            reason: format!("{what} is not a valid manifest: {e}"),
        })?;
        Ok((manifest, digest))
    }

    /// Downloads one blob into the cache unless it is there already.
    async fn blob(
        &self,
        image: &str,
        reference: &Reference,
        descriptor: &Descriptor,
        what: &str,
    ) -> Result<PathBuf, ContainerError> {
        let hex = sha256_hex(&descriptor.digest).ok_or_else(|| ContainerError::BadImage {
            image: image.into(),
            reason: format!("{what} digest {:?} is not sha256", descriptor.digest),
        })?;
        let path = self.blobs.join(hex);
        if path.is_file() {
            return Ok(path);
        }
        let registry_err = |source| ContainerError::Registry {
            image: image.into(),
            what: what.into(),
            source,
        };
        // The descriptor's size bounds the download: a registry cannot fill
        // the disk with a blob that would fail its digest anyway.
        let mut download = self
            .registry
            .blob(reference, &descriptor.digest, descriptor.size)
            .await
            .map_err(registry_err)?;
        let mut writer = BlobWriter::create(&self.blobs, hex)
            .map_err(|e| ContainerError::io("creating blob", &path, e))?;
        // On an error the writer is dropped unfinished: only its temporary
        // file remains, replaced by the next attempt.
        while let Some(bytes) = download.chunk().await.map_err(registry_err)? {
            writer
                .write(&bytes)
                .map_err(|e| ContainerError::io("writing blob", &path, e))?;
        }
        match writer.finish(&descriptor.digest) {
            Ok(path) => Ok(path),
            Err(Ok(actual)) => Err(ContainerError::DigestMismatch {
                image: image.into(),
                what: what.into(),
                expected: descriptor.digest.clone(),
                actual,
            }),
            Err(Err(e)) => Err(ContainerError::io("storing blob", &path, e)),
        }
    }

    /// Pulls `image` (as written in the compose file); layers are skipped when
    /// `is_unpacked(config_hex)` says the root exists already.
    pub(crate) async fn pull(
        &self,
        service: &str,
        image: &str,
        is_unpacked: impl Fn(&str) -> bool,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<PulledImage, ContainerError> {
        let reference = self.fetch_reference(image)?;
        progress(format!("{service}: pulling {image}"));
        let bad = |reason: &str| ContainerError::BadImage {
            image: image.into(),
            reason: reason.into(),
        };
        let (top, digest) = self.manifest(image, &reference, "manifest").await?;
        let manifest = match top.manifests {
            None => top,
            Some(entries) => {
                let entry = entries
                    .iter()
                    .find(|m| {
                        m.platform
                            .as_ref()
                            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                    })
                    .ok_or_else(|| bad("the image index has no linux/amd64 manifest"))?;
                let by_digest = reference.clone_with_digest(entry.digest.clone());
                let (manifest, _) = self
                    .manifest(image, &by_digest, "linux/amd64 manifest")
                    .await?;
                if manifest.manifests.is_some() {
                    return Err(bad("the index's linux/amd64 entry is another index"));
                }
                manifest
            }
        };
        let config_descriptor = manifest
            .config
            .as_ref()
            .ok_or_else(|| bad("the manifest has no config"))?;
        let config_path = self
            .blob(image, &reference, config_descriptor, "config")
            .await?;
        let config_bytes = std::fs::read(&config_path)
            .map_err(|e| ContainerError::io("reading config", &config_path, e))?;
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|e| ContainerError::BadImage {
                image: image.into(),
                reason: format!("config is not an OCI image config: {e}"),
            })?;
        let config_hex = sha256_hex(&config_descriptor.digest)
            .unwrap_or_default()
            .to_string();
        let mut layers = Vec::new();
        if !is_unpacked(&config_hex) {
            let count = manifest.layers.len();
            for (i, layer) in manifest.layers.iter().enumerate() {
                let what = format!("layer {}/{count}", i + 1);
                let path = self.blob(image, &reference, layer, &what).await?;
                progress(format!("{service}: {what} ({})", human_size(layer.size)));
                layers.push(path);
            }
        }
        Ok(PulledImage {
            digest,
            config_hex,
            config,
            layers,
        })
    }
}

#[cfg(test)]
#[path = "pull_tests.rs"]
mod tests;
