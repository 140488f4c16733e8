//! The local image store: content-addressed, in OCI image layout form.
//!
//! ```text
//! <root>/images/oci-layout, index.json, blobs/sha256/<hex>
//! <root>/layers/sha256/<hex of the layer blob>/   unpacked once, shared
//! ```
//!
//! Every blob is verified against its digest and size when it enters the
//! store; every layer's uncompressed stream against the config's `diff_id`
//! when it is unpacked. A layer is unpacked into a temporary directory and
//! renamed into place only when complete, so a corrupt or truncated blob is an
//! error, never a half-unpacked rootfs. The layout's JSON is read with small
//! serde types of our own (bounded, lenient to fields we do not use).
//!
//! Why one file of ~800 lines: every way into the store (import of an
//! archive, of a layout, of a rootfs; unpacking; removal and the sweep) keeps
//! the same guarantees with the same few helpers (the hashing reader, the
//! atomic write, the bounded JSON read), and reading them side by side is how
//! the guarantees are checked. Layer extraction, the hostile part, is apart in
//! `unpack.rs`.

pub mod gc;
pub mod reference;
pub mod registry;
pub mod unpack;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use unpack::Extract;

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_INDEX: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// When an image was tagged, in milliseconds since the epoch (the store's
/// own annotation: image GC's age and order).
const TAGGED: &str = "io.podagent.image.tagged";
/// JSON documents (index, manifest, config) larger than this are refused.
const MAX_JSON: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blob {digest}: {reason}")]
    Corrupt { digest: String, reason: String },
    #[error("reading {digest}")]
    Read {
        digest: String,
        #[source]
        source: std::io::Error,
    },
    #[error("layer entry {entry:?} refused: {reason}")]
    HostileEntry { entry: String, reason: String },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("image {0:?} is not in the store")]
    NotFound(String),
    #[error("image {reference:?} is used by {by}: stop it first")]
    InUse { reference: String, by: String },
    #[error("{0:?} is not an image reference: {1}")]
    Reference(String, String),
    #[error("registry")]
    Registry(#[from] registry::RegistryError),
    /// Every mirror failed, then the registry itself.
    #[error("mirrors failed ({tried}), then the registry")]
    Mirrors {
        tried: String,
        #[source]
        source: Box<ImageError>,
    },
}

impl ImageError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        ImageError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, ImageError>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// The parts of an image config that decide how a container starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Config {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RunConfig>,
    rootfs: RootFs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

/// An image as `podctl image ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    pub reference: String,
    pub digest: String,
    /// Compressed size of config and layers.
    pub size: u64,
}

/// What a container needs of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    pub reference: String,
    /// The manifest's digest: what the container runs (its `imageID`).
    pub digest: String,
    pub config: RunConfig,
    /// Unpacked layer directories, bottom first.
    pub layers: Vec<PathBuf>,
}

/// How far a blob of a pull or an import is (for a progress display).
#[derive(Debug, Clone, Copy)]
pub struct BlobProgress<'a> {
    pub digest: &'a str,
    pub media_type: &'a str,
    pub size: u64,
    /// Bytes stored so far: `size` once it is stored.
    pub done: u64,
    /// It was in the store already: nothing was fetched.
    pub present: bool,
}

/// Called as blobs arrive, from the threads that fetch them.
pub type Progress<'a> = &'a (dyn Fn(BlobProgress<'_>) + Sync);

/// Where the blobs of an ingest come from.
type Fetch<'a> = &'a (dyn Fn(&Descriptor) -> Result<Box<dyn Read>> + Sync);

/// Layers fetched at once by one pull (Docker's `max-concurrent-downloads`).
const PARALLEL_LAYERS: usize = 3;

/// A reader that reports how far it is.
struct Reporting<'a, R> {
    inner: R,
    d: &'a Descriptor,
    done: u64,
    progress: Progress<'a>,
}

impl<R: Read> Read for Reporting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        (self.progress)(BlobProgress {
            digest: &self.d.digest,
            media_type: &self.d.media_type,
            size: self.d.size,
            done: self.done,
            present: false,
        });
        Ok(n)
    }
}

/// `busybox` → `busybox:latest`; the syntax is checked as the manifest's is.
pub fn normalise_reference(r: &str) -> Result<String> {
    specs::resolve::paths::image_reference(r)
        .map_err(|e| ImageError::Reference(r.to_string(), e))?;
    let has_tag = specs::resolve::paths::image_tag(r).is_some() || r.contains('@');
    Ok(if has_tag {
        r.to_string()
    } else {
        format!("{r}:latest")
    })
}

fn hex_of(digest: &str) -> Result<&str> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| ImageError::Corrupt {
            digest: digest.to_string(),
            reason: "only sha256 digests are supported".into(),
        })?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(ImageError::Corrupt {
            digest: digest.to_string(),
            reason: "malformed digest".into(),
        });
    }
    Ok(hex)
}

/// `sha256:<hex>` of a finished SHA-256.
fn sha256_digest(hash: impl AsRef<[u8]>) -> String {
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }
    fn digest(self) -> String {
        sha256_digest(self.hash.finalize())
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let f = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
    let mut text = Vec::new();
    f.take(MAX_JSON + 1)
        .read_to_end(&mut text)
        .map_err(|e| ImageError::io("read", path, e))?;
    if text.len() as u64 > MAX_JSON {
        return Err(ImageError::Invalid {
            path: path.to_path_buf(),
            reason: format!("larger than {MAX_JSON} bytes"),
        });
    }
    serde_json::from_slice(&text).map_err(|e| ImageError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| ImageError::io("create", &tmp, e))?;
    f.write_all(bytes)
        .map_err(|e| ImageError::io("write", &tmp, e))?;
    f.sync_all().map_err(|e| ImageError::io("fsync", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| ImageError::io("rename into place", path, e))
}

#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// Opens (creating if needed) the store under `root`.
    pub fn open(root: &Path) -> Result<Self> {
        let s = ImageStore {
            root: root.to_path_buf(),
        };
        for d in [s.blobs(), s.root.join("layers/sha256"), s.root.join("tmp")] {
            fs::create_dir_all(&d).map_err(|e| ImageError::io("create", &d, e))?;
        }
        let layout = s.images().join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        if !s.index_path().exists() {
            s.write_index(&Index {
                schema_version: 2,
                media_type: Some(MEDIA_INDEX.into()),
                manifests: vec![],
            })?;
        }
        Ok(s)
    }

    fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    fn blobs(&self) -> PathBuf {
        self.images().join("blobs/sha256")
    }
    fn index_path(&self) -> PathBuf {
        self.images().join("index.json")
    }
    fn blob(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.blobs().join(hex_of(digest)?))
    }
    fn write_index(&self, index: &Index) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(index).map_err(|e| ImageError::Invalid {
            path: self.index_path(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.index_path(), &bytes)
    }
    fn index(&self) -> Result<Index> {
        read_json(&self.index_path())
    }

    /// Runs `f` holding the store's lock (one writer at a time).
    fn locked<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let path = self.root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ImageError::io("open", &path, e))?;
        let _guard = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| ImageError::io("lock", &path, e.into()))?;
        f()
    }

    /// Stores `reader`'s bytes as a blob, checking them against `expected`
    /// (digest and size) when given; returns the digest and size.
    fn put_blob(
        &self,
        mut reader: impl Read,
        expected: Option<(&str, u64)>,
    ) -> Result<(String, u64)> {
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir)
            .map_err(|e| ImageError::io("create temp file in", &tmp_dir, e))?;
        let mut h = Hashing::new(&mut reader);
        // Reading (a registry that breaks off, or times out) and writing
        // (the disk) fail with errors of their own.
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match h.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(ImageError::Read {
                        digest: expected.map_or_else(|| "blob".into(), |(d, _)| d.to_string()),
                        source,
                    })
                }
            };
            tmp.as_file_mut()
                .write_all(&buf[..n])
                .map_err(|e| ImageError::io("write", tmp.path(), e))?;
        }
        let size = h.count;
        let digest = h.digest();
        if let Some((want, want_size)) = expected {
            if size != want_size {
                let reason = if size > want_size {
                    format!("longer than the {want_size} bytes its descriptor says")
                } else {
                    format!("{size} bytes, the descriptor says {want_size}")
                };
                return Err(ImageError::Corrupt {
                    digest: want.to_string(),
                    reason,
                });
            }
            if digest != want {
                return Err(ImageError::Corrupt {
                    digest: want.to_string(),
                    reason: format!("content hashes to {digest}"),
                });
            }
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| ImageError::io("fsync", tmp.path(), e))?;
        let dest = self.blob(&digest)?;
        tmp.persist(&dest)
            .map_err(|e| ImageError::io("store blob", &dest, e.error))?;
        Ok((digest, size))
    }

    fn put_json(&self, value: &impl Serialize) -> Result<(String, u64)> {
        let bytes = serde_json::to_vec(value).map_err(|e| ImageError::Invalid {
            path: self.root.clone(),
            reason: e.to_string(),
        })?;
        self.put_blob(&bytes[..], None)
    }

    /// Adds or replaces `reference` in the store's index.
    fn tag(&self, reference: &str, manifest: Descriptor) -> Result<()> {
        let mut index = self.index()?;
        index
            .manifests
            .retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(reference));
        let mut d = manifest;
        d.annotations.insert(REF_NAME.into(), reference.to_string());
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        d.annotations.insert(TAGGED.into(), ms.to_string());
        d.platform = None;
        index.manifests.push(d);
        self.write_index(&index)
    }

    /// `podctl image import-rootfs DIR NAME:TAG`: a one-layer image of a
    /// directory, as `docker import` makes.
    pub fn import_rootfs(
        &self,
        dir: &Path,
        reference: &str,
        cmd: Vec<String>,
    ) -> Result<ImageInfo> {
        let reference = normalise_reference(reference)?;
        let meta = fs::metadata(dir).map_err(|e| ImageError::io("read", dir, e))?;
        if !meta.is_dir() {
            return Err(ImageError::Invalid {
                path: dir.to_path_buf(),
                reason: "not a directory".into(),
            });
        }
        self.locked(|| {
            let tmp_dir = self.root.join("tmp");
            let mut tar_file = tempfile::tempfile_in(&tmp_dir)
                .map_err(|e| ImageError::io("create temp file in", &tmp_dir, e))?;
            {
                let mut b = tar::Builder::new(&mut tar_file);
                b.follow_symlinks(false);
                b.mode(tar::HeaderMode::Complete);
                b.append_dir_all(".", dir)
                    .map_err(|e| ImageError::io("archive", dir, e))?;
                b.finish().map_err(|e| ImageError::io("archive", dir, e))?;
            }
            use std::io::Seek;
            tar_file
                .rewind()
                .map_err(|e| ImageError::io("rewind", &tmp_dir, e))?;
            let (layer_digest, layer_size) = self.put_blob(&tar_file, None)?;
            let config = Config {
                architecture: arch().into(),
                os: "linux".into(),
                config: Some(RunConfig {
                    cmd: (!cmd.is_empty()).then_some(cmd),
                    env: Some(vec![format!("PATH={}", specs::oci::DEFAULT_PATH)]),
                    ..RunConfig::default()
                }),
                rootfs: RootFs {
                    kind: "layers".into(),
                    diff_ids: vec![layer_digest.clone()],
                },
            };
            let (config_digest, config_size) = self.put_json(&config)?;
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(MEDIA_MANIFEST.into()),
                config: Descriptor {
                    media_type: MEDIA_CONFIG.into(),
                    digest: config_digest,
                    size: config_size,
                    annotations: BTreeMap::new(),
                    platform: None,
                },
                layers: vec![Descriptor {
                    media_type: MEDIA_LAYER_TAR.into(),
                    digest: layer_digest,
                    size: layer_size,
                    annotations: BTreeMap::new(),
                    platform: None,
                }],
            };
            let (digest, size) = self.put_json(&manifest)?;
            self.tag(
                &reference,
                Descriptor {
                    media_type: MEDIA_MANIFEST.into(),
                    digest: digest.clone(),
                    size,
                    annotations: BTreeMap::new(),
                    platform: None,
                },
            )?;
            Ok(ImageInfo {
                reference: reference.clone(),
                digest,
                size: config_size + layer_size,
            })
        })
    }

    /// `podctl image import PATH`: an OCI image layout directory, or an
    /// oci-archive (a tar of one). Every blob is verified before anything is
    /// tagged. `name` names an image whose layout gives only a tag.
    pub fn import(&self, path: &Path, name: Option<&str>) -> Result<Vec<ImageInfo>> {
        let meta = fs::metadata(path).map_err(|e| ImageError::io("read", path, e))?;
        if meta.is_dir() {
            return self.import_layout(path, name);
        }
        let tmp = tempfile::tempdir_in(self.root.join("tmp"))
            .map_err(|e| ImageError::io("create temp dir in", &self.root, e))?;
        let f = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
        unpack::unpack(f, tmp.path(), Extract::PlainFiles)?;
        self.import_layout(tmp.path(), name)
    }

    fn import_layout(&self, dir: &Path, name: Option<&str>) -> Result<Vec<ImageInfo>> {
        let layout: serde_json::Value = read_json(&dir.join("oci-layout"))?;
        if layout["imageLayoutVersion"] != "1.0.0" {
            return Err(ImageError::Invalid {
                path: dir.join("oci-layout"),
                reason: "imageLayoutVersion is not 1.0.0".into(),
            });
        }
        let index: Index = read_json(&dir.join("index.json"))?;
        let blob_in = |d: &Descriptor| -> Result<PathBuf> {
            Ok(dir.join("blobs/sha256").join(hex_of(&d.digest)?))
        };
        self.locked(|| {
            let mut imported = Vec::new();
            for top in &index.manifests {
                let reference = match (top.annotations.get(REF_NAME), name) {
                    (_, Some(n)) => normalise_reference(n)?,
                    (Some(r), None) if r.contains(['/', ':']) || !r.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) => normalise_reference(r)?,
                    (Some(r), None) => return Err(ImageError::Invalid { path: dir.to_path_buf(), reason: format!("image is named only by the tag {r:?}: import it with a name") }),
                    (None, None) => return Err(ImageError::Invalid { path: dir.to_path_buf(), reason: "an image has no org.opencontainers.image.ref.name: import it with a name".into() }),
                };
                let fetch = |d: &Descriptor| -> Result<Box<dyn Read>> {
                    let f = File::open(blob_in(d)?).map_err(|e| ImageError::io("open blob", dir, e))?;
                    Ok(Box::new(f))
                };
                let (desc, size) = self.ingest(top.clone(), &fetch, dir, None)?;
                self.tag(&reference, desc.clone())?;
                imported.push(ImageInfo { reference, digest: desc.digest.clone(), size });
            }
            Ok(imported)
        })
    }

    /// Stores the image `top` describes, every blob fetched by `fetch` and
    /// verified (digest and size) before it enters the store: a manifest,
    /// or an index and this machine's manifest in it; its config; its layers
    /// ([`PARALLEL_LAYERS`] at once). Returns the manifest's descriptor (to
    /// tag) and the image's size. `origin` names where it came from in errors.
    /// Safe without the store's lock (each blob enters by an atomic rename of
    /// its verified bytes), but only under it does the result stay whole
    /// until tagged: a removal's sweep takes what no tag holds.
    fn ingest(
        &self,
        top: Descriptor,
        fetch: Fetch<'_>,
        origin: &Path,
        progress: Option<Progress<'_>>,
    ) -> Result<(Descriptor, u64)> {
        let invalid = |reason: String| ImageError::Invalid {
            path: origin.to_path_buf(),
            reason,
        };
        // A blob already stored was verified when it entered: not fetched
        // again (an `Always` pull of an unchanged tag reads its manifest only).
        let copy = |d: &Descriptor| -> Result<()> {
            if self.blob(&d.digest)?.is_file() {
                if let Some(p) = progress {
                    p(BlobProgress {
                        digest: &d.digest,
                        media_type: &d.media_type,
                        size: d.size,
                        done: d.size,
                        present: true,
                    });
                }
                return Ok(());
            }
            let r = fetch(d)?;
            let r: Box<dyn Read> = match progress {
                Some(progress) => Box::new(Reporting {
                    inner: r,
                    d,
                    done: 0,
                    progress,
                }),
                None => r,
            };
            self.put_blob(r, Some((&d.digest, d.size))).map(drop)
        };
        // A multi-platform index: the manifest for this machine.
        let mut desc = top;
        if desc.media_type == MEDIA_INDEX || desc.media_type == DOCKER_INDEX {
            copy(&desc)?;
            let nested: Index = read_json(&self.blob(&desc.digest)?)?;
            desc = nested
                .manifests
                .into_iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == arch())
                })
                .ok_or_else(|| invalid(format!("no manifest for linux/{}", arch())))?;
        }
        if desc.media_type != MEDIA_MANIFEST && desc.media_type != DOCKER_MANIFEST {
            return Err(invalid(format!(
                "unsupported manifest media type {}",
                desc.media_type
            )));
        }
        copy(&desc)?;
        let manifest: Manifest = read_json(&self.blob(&desc.digest)?)?;
        copy(&manifest.config)?;
        let config: Config = read_json(&self.blob(&manifest.config.digest)?)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(invalid(
                "the config's diff_ids do not match the manifest's layers".into(),
            ));
        }
        for l in &manifest.layers {
            layer_kind(&l.media_type)
                .ok_or_else(|| invalid(format!("unsupported layer media type {}", l.media_type)))?;
            hex_of(&l.digest)?;
        }
        // The layers on a few threads; the first error stops the others
        // taking more (a blob half fetched leaves only its temp file, which
        // goes with its thread's error).
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed: std::sync::Mutex<Option<ImageError>> = std::sync::Mutex::new(None);
        let worker = || loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let stop = failed.lock().map_or(true, |f| f.is_some());
            let Some(l) = manifest.layers.get(i).filter(|_| !stop) else {
                return;
            };
            if let Err(e) = copy(l) {
                if let Ok(mut f) = failed.lock() {
                    f.get_or_insert(e);
                }
                return;
            }
        };
        let threads = PARALLEL_LAYERS.min(manifest.layers.len());
        if threads <= 1 {
            worker();
        } else {
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(worker);
                }
            });
        }
        if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        let size = manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>();
        Ok((
            Descriptor {
                annotations: BTreeMap::new(),
                platform: None,
                ..desc
            },
            size,
        ))
    }

    /// `podctl image pull REF`: the image from its registry (from its
    /// mirrors first, in order, when the node has some), every blob verified
    /// as an import's, tagged as the reference the manifests use (`busybox`
    /// → `busybox:latest`). A reference pinned by digest must hash to it. A
    /// blob longer than its descriptor is cut at one byte more and refused.
    /// Blobs are fetched without the store's lock (pulls overlap, and an
    /// import waits for no download); the lock is taken to check the whole
    /// image is there and tag it.
    pub fn pull(
        &self,
        client: &registry::Client,
        reference: &str,
        progress: Option<Progress<'_>>,
    ) -> Result<ImageInfo> {
        let r = reference::Reference::parse(reference)
            .map_err(|e| ImageError::Reference(reference.to_string(), e))?;
        let name = normalise_reference(reference)?;
        let endpoints = client.endpoints(&r);
        let mut failed = Vec::new();
        for e in &endpoints {
            match self.pull_from(client, e, &name, progress) {
                Ok(info) => return Ok(info),
                Err(err) if e.registry != r.registry => {
                    failed.push(format!("{}: {}", e.registry, crate::error_chain(&err)));
                }
                Err(err) if failed.is_empty() => return Err(err),
                Err(err) => {
                    return Err(ImageError::Mirrors {
                        tried: failed.join("; "),
                        source: Box::new(err),
                    })
                }
            }
        }
        unreachable!("the registry itself is the last endpoint")
    }

    fn pull_from(
        &self,
        client: &registry::Client,
        r: &reference::Reference,
        name: &str,
        progress: Option<Progress<'_>>,
    ) -> Result<ImageInfo> {
        let origin = PathBuf::from(r.to_string());
        let (bytes, header_media) = client.manifest(r, r.manifest_ref())?;
        let digest = sha256_digest(Sha256::digest(&bytes));
        if let Some(want) = &r.digest {
            if *want != digest {
                return Err(ImageError::Corrupt {
                    digest: want.clone(),
                    reason: format!("the registry's manifest hashes to {digest}"),
                });
            }
        }
        // The manifest says its own type when the server's header is vague.
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Typed {
            #[serde(default)]
            media_type: Option<String>,
        }
        let media_type = match header_media.as_str() {
            MEDIA_INDEX | MEDIA_MANIFEST | DOCKER_INDEX | DOCKER_MANIFEST => header_media,
            _ => serde_json::from_slice::<Typed>(&bytes)
                .ok()
                .and_then(|t| t.media_type)
                .unwrap_or(header_media),
        };
        let top = Descriptor {
            media_type,
            digest: digest.clone(),
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        };
        let fetch = |d: &Descriptor| -> Result<Box<dyn Read>> {
            if d.digest == top.digest {
                return Ok(Box::new(std::io::Cursor::new(bytes.clone())));
            }
            if [MEDIA_MANIFEST, DOCKER_MANIFEST, MEDIA_INDEX, DOCKER_INDEX]
                .contains(&d.media_type.as_str())
            {
                let (b, _) = client.manifest(r, &d.digest)?;
                return Ok(Box::new(std::io::Cursor::new(b)));
            }
            Ok(Box::new(
                client.blob(r, &d.digest, d.size)?.take(d.size + 1),
            ))
        };
        self.ingest(top.clone(), &fetch, &origin, progress)?;
        // Under the lock every blob is there (fetched again if a removal
        // swept it meanwhile) when the tag is written.
        self.locked(|| {
            let (desc, size) = self.ingest(top.clone(), &fetch, &origin, None)?;
            let digest = desc.digest.clone();
            self.tag(name, desc)?;
            Ok(ImageInfo {
                reference: name.to_string(),
                digest,
                size,
            })
        })
    }

    /// Every tagged image.
    pub fn list(&self) -> Result<Vec<ImageInfo>> {
        let mut out = Vec::new();
        for d in self.index()?.manifests {
            let Some(reference) = d.annotations.get(REF_NAME).cloned() else {
                continue;
            };
            let manifest: Manifest = read_json(&self.blob(&d.digest)?)?;
            out.push(ImageInfo {
                reference,
                digest: d.digest,
                size: manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>(),
            });
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// `podctl image rm`: refused while `in_use` names a container that uses
    /// it; blobs and unpacked layers no other image references are deleted.
    pub fn remove(&self, reference: &str, in_use: &dyn Fn(&str) -> Option<String>) -> Result<()> {
        let reference = normalise_reference(reference)?;
        if let Some(by) = in_use(&reference) {
            return Err(ImageError::InUse { reference, by });
        }
        self.locked(|| self.untag_and_sweep(&reference, None))
    }

    /// Image GC's removal: `reference` untagged, and what no other image
    /// holds moved into `trash` (a new directory on the store's filesystem,
    /// for the caller to delete): the store's lock is held for renames only.
    pub fn remove_to(&self, reference: &str, trash: &Path) -> Result<()> {
        let reference = normalise_reference(reference)?;
        fs::create_dir_all(trash).map_err(|e| ImageError::io("create", trash, e))?;
        self.locked(|| self.untag_and_sweep(&reference, Some(trash)))
    }

    /// A directory for [`ImageStore::remove_to`], on the store's filesystem.
    pub fn trash_dir(&self) -> Result<tempfile::TempDir> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix("trash-")
            .tempdir_in(&tmp)
            .map_err(|e| ImageError::io("create temp dir in", &tmp, e))
    }

    /// Under the lock: untags `reference`, then sweeps what no remaining
    /// image reaches, into `trash` or deleted.
    fn untag_and_sweep(&self, reference: &str, trash: Option<&Path>) -> Result<()> {
        let mut index = self.index()?;
        let before = index.manifests.len();
        index
            .manifests
            .retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(reference));
        if index.manifests.len() == before {
            return Err(ImageError::NotFound(reference.to_string()));
        }
        self.write_index(&index)?;
        // Mark what remains reachable, sweep the rest.
        let mut keep = BTreeSet::new();
        for d in &index.manifests {
            keep.insert(hex_of(&d.digest)?.to_string());
            let m: Manifest = read_json(&self.blob(&d.digest)?)?;
            keep.insert(hex_of(&m.config.digest)?.to_string());
            for l in &m.layers {
                keep.insert(hex_of(&l.digest)?.to_string());
            }
        }
        for (i, dir) in [self.blobs(), self.root.join("layers/sha256")]
            .into_iter()
            .enumerate()
        {
            for e in fs::read_dir(&dir)
                .map_err(|e| ImageError::io("list", &dir, e))?
                .flatten()
            {
                let name = e.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    continue;
                }
                let p = e.path();
                let r = match trash {
                    Some(t) => fs::rename(&p, t.join(format!("{i}-{name}"))),
                    None if p.is_dir() => fs::remove_dir_all(&p),
                    None => fs::remove_file(&p),
                };
                r.map_err(|err| ImageError::io("remove", &p, err))?;
            }
        }
        Ok(())
    }

    /// When each image was tagged (pulled or imported), by reference; none
    /// for an image tagged before the store recorded it.
    pub fn tagged_times(&self) -> Result<BTreeMap<String, std::time::SystemTime>> {
        let mut out = BTreeMap::new();
        for d in self.index()?.manifests {
            let (Some(r), Some(ms)) = (d.annotations.get(REF_NAME), d.annotations.get(TAGGED))
            else {
                continue;
            };
            if let Ok(ms) = ms.parse::<u64>() {
                out.insert(
                    r.clone(),
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                );
            }
        }
        Ok(out)
    }

    /// The size and free space of the store's filesystem, in bytes (what
    /// image GC's thresholds are of).
    pub fn filesystem(&self) -> Result<(u64, u64)> {
        let st = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| ImageError::io("statvfs", &self.root, e.into()))?;
        let frag = st.fragment_size() as u64;
        Ok((
            st.blocks() as u64 * frag,
            st.blocks_available() as u64 * frag,
        ))
    }

    /// The normalised reference, and the digest and manifest it names in
    /// the index.
    /// A reference pinned by digest (`repo@sha256:…`) also finds the image
    /// of that repository stored under a tag, when its manifest has that
    /// digest: pulled by tag, it runs pinned with no registry.
    fn manifest(&self, reference: &str) -> Result<(String, String, Manifest)> {
        let reference = normalise_reference(reference)?;
        let manifests = self.index()?.manifests;
        // The same repository is the same registry and path once both are
        // normalised as Docker does (`busybox` is docker.io/library/busybox).
        let pinned = reference::Reference::parse(&reference)
            .ok()
            .and_then(|r| Some((r.digest.clone()?, r)));
        let same_digest = |d: &Descriptor| -> bool {
            let (Some((digest, p)), Some(name)) = (&pinned, d.annotations.get(REF_NAME)) else {
                return false;
            };
            d.digest == *digest
                && reference::Reference::parse(name)
                    .is_ok_and(|r| r.registry == p.registry && r.repository == p.repository)
        };
        let desc = manifests
            .iter()
            .find(|d| d.annotations.get(REF_NAME) == Some(&reference))
            .or_else(|| manifests.iter().find(|d| same_digest(d)))
            .cloned()
            .ok_or_else(|| ImageError::NotFound(reference.clone()))?;
        let manifest: Manifest = read_json(&self.blob(&desc.digest)?)?;
        Ok((reference, desc.digest, manifest))
    }

    /// Whether the store holds `reference`: its tag and manifest, read
    /// without unpacking anything (what a pull policy asks).
    pub fn contains(&self, reference: &str) -> bool {
        self.manifest(reference).is_ok()
    }

    /// Where the image's layers are (or would be) unpacked, without
    /// unpacking anything.
    pub fn layer_dirs(&self, reference: &str) -> Result<Vec<PathBuf>> {
        let (_, _, manifest) = self.manifest(reference)?;
        manifest
            .layers
            .iter()
            .map(|l| Ok(self.root.join("layers/sha256").join(hex_of(&l.digest)?)))
            .collect()
    }

    /// The image's run config and its unpacked layers (unpacked now if needed,
    /// once per layer digest).
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage> {
        let (reference, digest, manifest) = self.manifest(reference)?;
        let config: Config = read_json(&self.blob(&manifest.config.digest)?)?;
        let mut layers = Vec::new();
        for (l, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            layers.push(self.unpacked(l, diff_id)?);
        }
        Ok(ResolvedImage {
            reference,
            digest,
            config: config.config.unwrap_or_default(),
            layers,
        })
    }

    fn unpacked(&self, layer: &Descriptor, diff_id: &str) -> Result<PathBuf> {
        let dest = self.root.join("layers/sha256").join(hex_of(&layer.digest)?);
        if dest.is_dir() {
            return Ok(dest);
        }
        self.locked(|| {
            if dest.is_dir() {
                return Ok(dest.clone());
            }
            let blob = self.blob(&layer.digest)?;
            // Verified on import; verified again here, as the file may have
            // been damaged on disk since.
            let f = File::open(&blob).map_err(|e| ImageError::io("open", &blob, e))?;
            let mut compressed = Hashing::new(f);
            let tmp = tempfile::tempdir_in(self.root.join("tmp"))
                .map_err(|e| ImageError::io("create temp dir in", &self.root, e))?;
            let kind = layer_kind(&layer.media_type).ok_or_else(|| ImageError::Corrupt {
                digest: layer.digest.clone(),
                reason: format!("unsupported media type {}", layer.media_type),
            })?;
            let diff = {
                let decompressed: Box<dyn Read> = match kind {
                    Compression::None => Box::new(&mut compressed),
                    Compression::Gzip => Box::new(flate2::read::GzDecoder::new(&mut compressed)),
                    Compression::Zstd => Box::new(
                        ruzstd::decoding::StreamingDecoder::new(&mut compressed).map_err(|e| {
                            ImageError::Corrupt {
                                digest: layer.digest.clone(),
                                reason: format!("zstd: {e}"),
                            }
                        })?,
                    ),
                };
                let mut uncompressed = Hashing::new(decompressed);
                let result = unpack::unpack(&mut uncompressed, tmp.path(), Extract::Layer);
                // Hash the tar's trailing padding too.
                let drained = std::io::copy(&mut uncompressed, &mut std::io::sink());
                match (result, drained) {
                    (Err(e), _) => return Err(self.damaged(layer, e)),
                    (_, Err(e)) => {
                        return Err(ImageError::Corrupt {
                            digest: layer.digest.clone(),
                            reason: format!("reading the layer: {e}"),
                        })
                    }
                    _ => {}
                }
                uncompressed.digest()
            };
            let _ = std::io::copy(&mut compressed, &mut std::io::sink());
            let blob_digest = compressed.digest();
            if blob_digest != layer.digest {
                return Err(ImageError::Corrupt {
                    digest: layer.digest.clone(),
                    reason: format!("content on disk hashes to {blob_digest}"),
                });
            }
            if diff != diff_id {
                return Err(ImageError::Corrupt {
                    digest: layer.digest.clone(),
                    reason: format!(
                        "uncompressed content hashes to {diff}, the config says {diff_id}"
                    ),
                });
            }
            let tmp_path = tmp.keep();
            fs::rename(&tmp_path, &dest)
                .map_err(|e| ImageError::io("rename into place", &dest, e))?;
            Ok(dest.clone())
        })
    }

    /// A read error while unpacking is reported as a damaged blob, a refused
    /// entry as itself.
    fn damaged(&self, layer: &Descriptor, e: ImageError) -> ImageError {
        match e {
            ImageError::Io { source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::InvalidData
                        | std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::InvalidInput
                ) =>
            {
                ImageError::Corrupt {
                    digest: layer.digest.clone(),
                    reason: format!("damaged layer: {source}"),
                }
            }
            other => other,
        }
    }
}

enum Compression {
    None,
    Gzip,
    Zstd,
}

fn layer_kind(media_type: &str) -> Option<Compression> {
    match media_type {
        MEDIA_LAYER_TAR => Some(Compression::None),
        MEDIA_LAYER_GZIP | DOCKER_LAYER_GZIP => Some(Compression::Gzip),
        MEDIA_LAYER_ZSTD => Some(Compression::Zstd),
        _ => None,
    }
}

/// The OCI architecture name of this build.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_get_a_default_tag() {
        assert_eq!(normalise_reference("busybox").unwrap(), "busybox:latest");
        assert_eq!(
            normalise_reference("reg:5000/app:v1").unwrap(),
            "reg:5000/app:v1"
        );
        assert!(normalise_reference("Bad Name").is_err());
    }

    #[test]
    fn digests_must_be_sha256_hex_so_they_are_safe_file_names() {
        let good = format!("sha256:{}", specs::hash::sha256_hex(b"x"));
        assert_eq!(hex_of(&good).unwrap().len(), 64);
        assert!(hex_of("sha256:../../etc/passwd").is_err());
        assert!(hex_of("md5:00").is_err());
    }
}
