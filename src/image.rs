//! Image config and manifests (OCI and Docker schema 2), as canonical JSON bytes. No I/O.
//!
//! Every document is serialized with its object keys sorted (through `serde_json::Value`,
//! whose map is a `BTreeMap`), so the bytes, and hence the digests, do not depend on the
//! iteration order of the `HashMap`s inside oci-spec's types.

use std::collections::BTreeMap;

use oci_spec::image::{
    ConfigBuilder, Descriptor, HistoryBuilder, ImageConfigurationBuilder, ImageManifestBuilder,
    MediaType, RootFsBuilder,
};
use serde::Serialize;

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The default PATH of an image: the usual one, so packed tools find each other.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the self-image keeps its store: a fixed path, so the container needs no HOME and
/// `docker run -v VOLUME:/var/lib/quinistry` keeps it.
pub const SELF_STORE: &str = "/var/lib/quinistry";
/// Where the self-image listens unless told otherwise: every address, the port it exposes.
pub const SELF_LISTEN: &str = "0.0.0.0:8080";
/// Where the self-image's executable goes, and its entrypoint.
pub const SELF_PATH: &str = "/main";

/// The run settings of the self-image: quinistry packing its own executable. Everything here
/// is a constant of this build or a setting the image carries itself, so the image run as a
/// container computes the very same config, and so the same digests, as the process that
/// packed it (the quine's fixed point).
///
/// `settings` are the `QUINISTRY_*` variables that changed the layer's bytes
/// (`QUINISTRY_LEVEL=1`); they go into the Env, with a non-zero `created` as
/// `SOURCE_DATE_EPOCH`, so that the child packs the same way with any command line, such as
/// `serve --listen ADDR`. The Cmd is plain `serve`: the listen address is in the Env too
/// (`QUINISTRY_LISTEN=0.0.0.0:8080`), so `docker run -e QUINISTRY_LISTEN=...` changes it
/// without touching the Cmd.
pub fn self_image(created: u64, settings: &[String]) -> RunConfig {
    let mut labels = BTreeMap::new();
    let mut label = |k: &str, v: &str| {
        if !v.is_empty() {
            labels.insert(format!("org.opencontainers.image.{k}"), v.to_owned());
        }
    };
    label("title", env!("CARGO_PKG_NAME"));
    label("version", env!("CARGO_PKG_VERSION"));
    label("description", env!("CARGO_PKG_DESCRIPTION"));
    label("source", env!("CARGO_PKG_REPOSITORY"));
    RunConfig {
        entrypoint: Some(vec![SELF_PATH.to_owned()]),
        cmd: Some(vec!["serve".to_owned()]),
        env: [
            DEFAULT_PATH.to_owned(),
            format!("QUINISTRY_STORE={SELF_STORE}"),
            format!("QUINISTRY_LISTEN={SELF_LISTEN}"),
        ]
        .into_iter()
        .chain((created != 0).then(|| format!("SOURCE_DATE_EPOCH={created}")))
        .chain(settings.iter().cloned())
        .collect(),
        labels,
        exposed_ports: vec!["8080/tcp".to_owned()],
        created,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot build image document: {0}")]
    Build(#[from] oci_spec::OciSpecError),
    #[error("cannot serialize image document: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a {0:?} layer has no media type in a {1:?} manifest")]
    NoMediaType(LayerEncoding, ManifestForm),
}

/// One compressed layer as the packer produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// sha256 of the compressed bytes: the blob's name and the manifest's layer digest.
    pub digest: Digest,
    /// Size of the compressed blob.
    pub size: u64,
    /// sha256 of the uncompressed tar: what the config's `rootfs.diff_ids` lists.
    pub diff_id: Digest,
    /// How the tar is compressed: the layer's media type in a manifest.
    pub encoding: LayerEncoding,
}

/// What a layer blob holds: a tar stream, plain or compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerEncoding {
    Tar,
    Gzip,
    Zstd,
}

impl LayerEncoding {
    /// The layer's media type in a manifest of `form`; `None` where that form has none
    /// (Docker schema 2 has no zstd layers).
    pub fn media_type(self, form: ManifestForm) -> Option<&'static str> {
        match (form, self) {
            (ManifestForm::Oci, LayerEncoding::Tar) => Some(OCI_LAYER_TAR),
            (ManifestForm::Oci, LayerEncoding::Gzip) => Some(OCI_LAYER_GZIP),
            (ManifestForm::Oci, LayerEncoding::Zstd) => Some(OCI_LAYER_ZSTD),
            (ManifestForm::Docker, LayerEncoding::Tar) => Some(DOCKER_LAYER_TAR),
            (ManifestForm::Docker, LayerEncoding::Gzip) => Some(DOCKER_LAYER_GZIP),
            (ManifestForm::Docker, LayerEncoding::Zstd) => None,
        }
    }

    /// As users name it: `tar`, `gzip`, `zstd`.
    pub fn name(self) -> &'static str {
        match self {
            LayerEncoding::Tar => "tar",
            LayerEncoding::Gzip => "gzip",
            LayerEncoding::Zstd => "zstd",
        }
    }

    /// The encoding an OCI layer media type names.
    fn from_oci(media_type: &str) -> Option<LayerEncoding> {
        [LayerEncoding::Tar, LayerEncoding::Gzip, LayerEncoding::Zstd]
            .into_iter()
            .find(|e| e.media_type(ManifestForm::Oci) == Some(media_type))
    }
}

/// The run-time settings that go into the image config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` entries; the default is [`DEFAULT_PATH`].
    pub env: Vec<String>,
    /// Image labels; a BTreeMap so callers build them in a fixed order too.
    pub labels: BTreeMap<String, String>,
    /// e.g. `8080/tcp`.
    pub exposed_ports: Vec<String>,
    /// Seconds since the epoch for `created` and history: `SOURCE_DATE_EPOCH` or 0, never now.
    pub created: u64,
}

/// Run settings a user gives an image (command-line flags, an images file); what is unset
/// keeps the image's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSettings {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE`, each replacing a default of the same key or added in order.
    pub env: Vec<String>,
}

impl RunSettings {
    /// Refuses an environment entry that is not `KEY=VALUE`.
    pub fn check(&self) -> Result<(), String> {
        for e in &self.env {
            if e.split_once('=').is_none_or(|(key, _)| key.is_empty()) {
                return Err(format!("invalid environment entry {e:?}: use KEY=VALUE"));
            }
        }
        Ok(())
    }

    /// `run` with these settings over its defaults.
    pub fn apply(&self, mut run: RunConfig) -> RunConfig {
        if let Some(e) = &self.entrypoint {
            run.entrypoint = Some(e.clone());
        }
        if let Some(c) = &self.cmd {
            run.cmd = Some(c.clone());
        }
        for e in &self.env {
            let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
            let same_key = |d: &String| d.split_once('=').is_some_and(|(k, _)| k == key);
            match run.env.iter().position(same_key) {
                Some(i) => run.env[i] = e.clone(),
                None => run.env.push(e.clone()),
            }
        }
        run
    }
}

/// The two manifest forms we serve. Both name the same config and layer blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestForm {
    Oci,
    Docker,
}

impl ManifestForm {
    pub fn media_type(self) -> &'static str {
        match self {
            ManifestForm::Oci => OCI_MANIFEST,
            ManifestForm::Docker => DOCKER_MANIFEST,
        }
    }

    fn config_media_type(self) -> &'static str {
        match self {
            ManifestForm::Oci => OCI_CONFIG,
            ManifestForm::Docker => DOCKER_CONFIG,
        }
    }
}

/// The architecture name images use (Go's GOARCH) for the one this binary was built for.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Serializes with object keys sorted: the same document always gives the same bytes.
fn canonical_json(doc: &impl Serialize) -> Result<Vec<u8>, ImageError> {
    Ok(serde_json::to_vec(&serde_json::to_value(doc)?)?)
}

/// RFC 3339 UTC time for seconds since the epoch (civil-from-days; no clock, no time zone).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The image config JSON for `layers` (base first).
pub fn config_json(run: &RunConfig, layers: &[Layer]) -> Result<Vec<u8>, ImageError> {
    config_json_noting(run, layers, &[])
}

/// `config_json`, each layer's history entry with a comment from `notes` (by position; an
/// empty one, or none, adds none): what a layer holds, such as the Debian package it is.
pub fn config_json_noting(
    run: &RunConfig,
    layers: &[Layer],
    notes: &[String],
) -> Result<Vec<u8>, ImageError> {
    let created = rfc3339(run.created);
    let env = if run.env.is_empty() {
        vec![DEFAULT_PATH.to_owned()]
    } else {
        run.env.clone()
    };
    let mut config = ConfigBuilder::default().env(env);
    if let Some(e) = &run.entrypoint {
        config = config.entrypoint(e.clone());
    }
    if let Some(c) = &run.cmd {
        config = config.cmd(c.clone());
    }
    if !run.labels.is_empty() {
        config = config.labels(
            run.labels
                .clone()
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        );
    }
    if !run.exposed_ports.is_empty() {
        config = config.exposed_ports(run.exposed_ports.clone());
    }
    let history = layers
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let mut entry = HistoryBuilder::default();
            entry = entry.created(created.clone()).created_by("quinistry pack");
            if let Some(note) = notes.get(i).filter(|n| !n.is_empty()) {
                entry = entry.comment(note.clone());
            }
            entry.build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let image = ImageConfigurationBuilder::default()
        .created(created.clone())
        .architecture(host_architecture())
        .os("linux")
        .config(config.build()?)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(
                    layers
                        .iter()
                        .map(|l| l.diff_id.to_string())
                        .collect::<Vec<_>>(),
                )
                .build()?,
        )
        .history(history)
        .build()?;
    canonical_json(&image)
}

/// A manifest in `form` naming a config blob and `layers`.
pub fn manifest_json(
    form: ManifestForm,
    config: (&Digest, u64),
    layers: &[Layer],
) -> Result<Vec<u8>, ImageError> {
    let layers: Vec<_> = layers
        .iter()
        .map(|l| (&l.digest, l.size, l.encoding))
        .collect();
    manifest_from_descriptors(form, config, &layers)
}

fn manifest_from_descriptors(
    form: ManifestForm,
    config: (&Digest, u64),
    layers: &[(&Digest, u64, LayerEncoding)],
) -> Result<Vec<u8>, ImageError> {
    let descriptor = |media: &str, digest: &Digest, size: u64| -> Result<Descriptor, ImageError> {
        let d: oci_spec::image::Digest = digest.to_string().parse()?;
        Ok(Descriptor::new(MediaType::from(media), size, d))
    };
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::from(form.media_type()))
        .config(descriptor(form.config_media_type(), config.0, config.1)?)
        .layers(
            layers
                .iter()
                .map(|(digest, size, encoding)| {
                    let media = encoding
                        .media_type(form)
                        .ok_or(ImageError::NoMediaType(*encoding, form))?;
                    descriptor(media, digest, *size)
                })
                .collect::<Result<Vec<_>, _>>()?,
        )
        .build()?;
    canonical_json(&manifest)
}

/// Media types of documents served from the manifests endpoint.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// `media_type` if it is a manifest media type we serve.
pub fn known_manifest_type(media_type: &str) -> Option<&'static str> {
    MANIFEST_MEDIA_TYPES.into_iter().find(|t| *t == media_type)
}

/// How a schema 2 document tells what it is.
pub enum ManifestKind {
    /// By its `mediaType` (`None`: a type we do not serve).
    Declared(Option<&'static str>),
    /// It has no `mediaType` (OCI allows that); by its shape it looks like this (`None`:
    /// neither an image nor an index).
    Undeclared(Option<&'static str>),
}

/// How `bytes` tells what it is, or `None` if it is not a schema 2 JSON document.
pub fn manifest_kind(bytes: &[u8]) -> Option<ManifestKind> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        schema_version: Option<u64>,
        media_type: Option<String>,
        config: Option<serde_json::Value>,
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).ok()?;
    if probe.schema_version != Some(2) {
        return None;
    }
    Some(match probe.media_type.as_deref() {
        Some(m) => ManifestKind::Declared(known_manifest_type(m)),
        None if probe.manifests.is_some() => ManifestKind::Undeclared(Some(OCI_INDEX)),
        None if probe.config.is_some() => ManifestKind::Undeclared(Some(OCI_MANIFEST)),
        None => ManifestKind::Undeclared(None),
    })
}

/// The media type of a manifest or index document, or `None` if `bytes` is not one. An OCI
/// document may omit `mediaType`; its shape tells then.
pub fn manifest_media_type(bytes: &[u8]) -> Option<&'static str> {
    match manifest_kind(bytes)? {
        ManifestKind::Declared(t) | ManifestKind::Undeclared(t) => t,
    }
}

/// The Docker schema 2 twin of an OCI image manifest that `manifest_json` wrote: the same
/// config and layers, Docker media types. `None` for anything else (annotations, a subject,
/// zstd layers...), which has no faithful Docker form.
pub fn docker_form(oci_manifest: &[u8]) -> Option<Vec<u8>> {
    let m: oci_spec::image::ImageManifest = serde_json::from_slice(oci_manifest).ok()?;
    let plain = m.media_type().as_ref().map(|t| t.to_string()).as_deref() == Some(OCI_MANIFEST)
        && m.annotations().is_none()
        && m.subject().is_none()
        && m.artifact_type().is_none()
        && m.config().media_type().to_string() == OCI_CONFIG
        && m.layers().iter().all(|l| l.annotations().is_none());
    if !plain {
        return None;
    }
    let digest = |d: &oci_spec::image::Digest| d.to_string().parse::<Digest>().ok();
    let config = digest(m.config().digest())?;
    let layers: Vec<(Digest, u64, LayerEncoding)> = m
        .layers()
        .iter()
        .map(|l| {
            let encoding = LayerEncoding::from_oci(l.media_type().as_ref())?;
            Some((digest(l.digest())?, l.size(), encoding))
        })
        .collect::<Option<_>>()?;
    let refs: Vec<_> = layers.iter().map(|(d, s, e)| (d, *s, *e)).collect();
    manifest_from_descriptors(ManifestForm::Docker, (&config, m.config().size()), &refs).ok()
}

/// A descriptor as pushed manifests write it: only what the registry checks or reports.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushedDescriptor {
    media_type: Option<String>,
    digest: String,
    size: i64,
    /// A layer that lives elsewhere (Docker's foreign layers): not required in the repository.
    #[serde(default)]
    urls: Vec<String>,
}

/// A pushed manifest or index, read for what the registry must check and index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedManifest {
    pub media_type: &'static str,
    /// Whether the document says its media type itself; if not, `media_type` came from the
    /// push's `Content-Type` (or its shape) and must be remembered beside it.
    pub declared: bool,
    /// Blobs (config, layers) the repository must hold, with the sizes the manifest claims.
    pub blobs: Vec<(Digest, u64)>,
    /// Manifests (of an index) the repository must hold.
    pub children: Vec<(Digest, u64)>,
    /// The manifest this one refers to (OCI 1.1 `subject`).
    pub subject: Option<Digest>,
    /// What the referrers API reports: `artifactType`, else an image's config media type.
    pub artifact_type: Option<String>,
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Reads a pushed manifest. `content_type` is the request's `Content-Type` (parameters
/// stripped), which must agree with the document's `mediaType` when both are given. The
/// error says what is wrong, for a MANIFEST_INVALID answer.
/// How deeply arrays and objects may nest in a pushed manifest: an image manifest or index
/// needs 4, annotations and unknown fields get the rest.
pub const MAX_JSON_DEPTH: usize = 64;

/// The depth `bytes` reach once it is more than `max`, `None` if it stays within. serde_json
/// stops at 128 levels only where it builds values: the fields a manifest type does not name
/// are skipped without a limit, so 100,000 nested arrays under an unknown key went through.
/// A scan of brackets outside strings (one pass, no allocation) catches them first.
fn nested_deeper_than(bytes: &[u8], max: usize) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Some(depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

pub fn parse_pushed_manifest(
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<PushedManifest, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Doc {
        schema_version: Option<i64>,
        media_type: Option<String>,
        artifact_type: Option<String>,
        config: Option<PushedDescriptor>,
        layers: Option<Vec<PushedDescriptor>>,
        manifests: Option<Vec<PushedDescriptor>>,
        subject: Option<PushedDescriptor>,
        annotations: Option<serde_json::Map<String, serde_json::Value>>,
    }
    if let Some(depth) = nested_deeper_than(bytes, MAX_JSON_DEPTH) {
        return Err(format!(
            "the document nests {depth} levels deep; at most {MAX_JSON_DEPTH} are accepted"
        ));
    }
    let doc: Doc =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JSON manifest: {e}"))?;
    if doc.schema_version != Some(2) {
        return Err("schemaVersion must be 2 (Docker schema 1 is not supported)".to_owned());
    }
    // What the document is, by its shape: it must not be both an image and an index.
    let image_shaped = doc.config.is_some() || doc.layers.is_some();
    if image_shaped && doc.manifests.is_some() {
        return Err(
            "the document has both an image's config/layers and an index's manifests".to_owned(),
        );
    }
    let content_type = content_type.filter(|t| !t.is_empty());
    let media_type = match (doc.media_type.as_deref(), content_type) {
        (Some(inner), Some(outer)) if inner != outer => {
            return Err(format!(
                "Content-Type {outer} does not match the manifest's mediaType {inner}"
            ));
        }
        (Some(t), _) | (None, Some(t)) => {
            known_manifest_type(t).ok_or_else(|| format!("unsupported manifest media type {t}"))?
        }
        (None, None) => manifest_media_type(bytes)
            .ok_or("no mediaType and no Content-Type: cannot tell what this document is")?,
    };
    let descriptor = |d: &PushedDescriptor, what: &str| -> Result<(Digest, u64), String> {
        let digest = d
            .digest
            .parse::<Digest>()
            .map_err(|e| format!("{what} digest {:?}: {e}", d.digest))?;
        let size =
            u64::try_from(d.size).map_err(|_| format!("{what} size {} is negative", d.size))?;
        Ok((digest, size))
    };
    let is_index = media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST;
    if is_index && image_shaped {
        return Err(format!(
            "{media_type} is an index, but the document has an image's config/layers"
        ));
    }
    if !is_index && doc.manifests.is_some() {
        return Err(format!(
            "{media_type} is an image manifest, but the document has an index's manifests"
        ));
    }
    let mut pushed = PushedManifest {
        declared: doc.media_type.is_some(),
        media_type,
        blobs: Vec::new(),
        children: Vec::new(),
        subject: match &doc.subject {
            Some(s) => Some(descriptor(s, "subject")?.0),
            None => None,
        },
        artifact_type: doc.artifact_type.clone(),
        annotations: doc.annotations,
    };
    if is_index {
        let manifests = doc.manifests.ok_or("an index needs a manifests list")?;
        for m in &manifests {
            pushed.children.push(descriptor(m, "manifest")?);
        }
    } else {
        let config = doc.config.ok_or("an image manifest needs a config")?;
        let layers = doc.layers.ok_or("an image manifest needs a layers list")?;
        pushed.blobs.push(descriptor(&config, "config")?);
        for layer in layers.iter().filter(|l| l.urls.is_empty()) {
            pushed.blobs.push(descriptor(layer, "layer")?);
        }
        if pushed.artifact_type.is_none() {
            pushed.artifact_type = config.media_type.clone();
        }
    }
    Ok(pushed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn nesting_is_counted_outside_strings_only() {
        use super::nested_deeper_than;
        assert_eq!(nested_deeper_than(br#"{"a":[[1]]}"#, 3), None);
        assert_eq!(nested_deeper_than(br#"{"a":[[[1]]]}"#, 3), Some(4));
        // Brackets and escaped quotes inside strings are text.
        assert_eq!(nested_deeper_than(br#"{"a":"[[[[\"[[[["}"#, 1), None);
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(nested_deeper_than(deep.as_bytes(), 64), Some(65));
    }

    use super::*;
    use serde_json::Value;

    fn layer() -> Layer {
        Layer {
            digest: Digest::sha256_of(b"gz"),
            size: 2,
            diff_id: Digest::sha256_of(b"tar"),
            encoding: LayerEncoding::Gzip,
        }
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn config_carries_diff_ids_and_run_settings() {
        let run = RunConfig {
            entrypoint: Some(vec!["/main".into()]),
            cmd: Some(vec!["serve".into()]),
            exposed_ports: vec!["8080/tcp".into()],
            created: 1_700_000_000,
            ..Default::default()
        };
        let json: Value =
            serde_json::from_slice(&config_json(&run, &[layer()]).expect("config")).expect("json");
        assert_eq!(json["rootfs"]["type"], "layers");
        assert_eq!(
            json["rootfs"]["diff_ids"][0],
            Digest::sha256_of(b"tar").to_string()
        );
        assert_eq!(json["config"]["Entrypoint"][0], "/main");
        assert_eq!(json["config"]["Cmd"][0], "serve");
        assert_eq!(json["config"]["Env"][0], DEFAULT_PATH);
        assert!(json["config"]["ExposedPorts"]["8080/tcp"].is_object());
        assert_eq!(json["created"], "2023-11-14T22:13:20Z");
        assert_eq!(json["history"][0]["created"], "2023-11-14T22:13:20Z");
        assert_eq!(json["os"], "linux");
        assert_eq!(json["architecture"], host_architecture());
    }

    #[test]
    fn layer_notes_are_history_comments_and_an_empty_one_adds_none() {
        let run = RunConfig::default();
        let notes = ["coreutils".to_owned(), String::new()];
        let json: serde_json::Value = serde_json::from_slice(
            &config_json_noting(&run, &[layer(), layer()], &notes).expect("config"),
        )
        .expect("json");
        assert_eq!(json["history"][0]["comment"], "coreutils");
        assert!(json["history"][1].get("comment").is_none(), "{json}");
        assert_eq!(
            config_json_noting(&run, &[layer()], &[]).expect("config"),
            config_json(&run, &[layer()]).expect("config")
        );
    }

    #[test]
    fn documents_are_canonical_whatever_the_map_order() {
        // Many labels: a HashMap would iterate them in a different order run to run.
        let labels: BTreeMap<String, String> = (0..64)
            .map(|i| (format!("label.{i}"), i.to_string()))
            .collect();
        let run = RunConfig {
            labels,
            ..Default::default()
        };
        let first = config_json(&run, &[layer()]).expect("config");
        for _ in 0..8 {
            assert_eq!(config_json(&run, &[layer()]).expect("config"), first);
        }
        // Keys appear sorted at every level.
        let text = String::from_utf8(first).expect("utf8");
        let pos = |k: &str| text.find(k).expect(k);
        assert!(pos("\"architecture\"") < pos("\"config\""));
        assert!(pos("\"config\"") < pos("\"created\""));
        assert!(pos("\"label.0\"") < pos("\"label.1\""));
    }

    #[test]
    fn both_manifest_forms_use_their_media_types() {
        let config = Digest::sha256_of(b"config");
        for (form, manifest, config_type, layer_type) in [
            (ManifestForm::Oci, OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP),
            (
                ManifestForm::Docker,
                DOCKER_MANIFEST,
                DOCKER_CONFIG,
                DOCKER_LAYER_GZIP,
            ),
        ] {
            let bytes = manifest_json(form, (&config, 6), &[layer()]).expect("manifest");
            let json: Value = serde_json::from_slice(&bytes).expect("json");
            assert_eq!(json["schemaVersion"], 2);
            assert_eq!(json["mediaType"], manifest);
            assert_eq!(json["config"]["mediaType"], config_type);
            assert_eq!(json["config"]["digest"], config.to_string());
            assert_eq!(json["config"]["size"], 6);
            assert_eq!(json["layers"][0]["mediaType"], layer_type);
            assert_eq!(json["layers"][0]["digest"], layer().digest.to_string());
            assert_eq!(json["layers"][0]["size"], 2);
        }
    }

    #[test]
    fn docker_form_is_derived_from_the_oci_form_byte_for_byte() {
        let config = Digest::sha256_of(b"config");
        let layers = [layer(), layer()];
        let oci = manifest_json(ManifestForm::Oci, (&config, 9), &layers).expect("oci");
        let docker = manifest_json(ManifestForm::Docker, (&config, 9), &layers).expect("docker");
        assert_eq!(docker_form(&oci), Some(docker.clone()));
        assert_eq!(manifest_media_type(&oci), Some(OCI_MANIFEST));
        assert_eq!(manifest_media_type(&docker), Some(DOCKER_MANIFEST));
        // A Docker manifest has no further twin; an annotated OCI one has no faithful one.
        assert_eq!(docker_form(&docker), None);
        let mut v: Value = serde_json::from_slice(&oci).expect("json");
        v["annotations"] = serde_json::json!({"a": "b"});
        assert_eq!(docker_form(&serde_json::to_vec(&v).expect("ser")), None);
    }

    #[test]
    fn each_encoding_has_its_media_type_and_zstd_has_no_docker_form() {
        let config = Digest::sha256_of(b"config");
        let with = |encoding| Layer {
            encoding,
            ..layer()
        };
        for (encoding, oci, docker) in [
            (LayerEncoding::Tar, OCI_LAYER_TAR, Some(DOCKER_LAYER_TAR)),
            (LayerEncoding::Gzip, OCI_LAYER_GZIP, Some(DOCKER_LAYER_GZIP)),
            (LayerEncoding::Zstd, OCI_LAYER_ZSTD, None),
        ] {
            let m = manifest_json(ManifestForm::Oci, (&config, 9), &[with(encoding)]).expect("oci");
            let json: Value = serde_json::from_slice(&m).expect("json");
            assert_eq!(json["layers"][0]["mediaType"], oci);
            let direct = manifest_json(ManifestForm::Docker, (&config, 9), &[with(encoding)]);
            match docker {
                Some(media) => {
                    let twin = docker_form(&m).expect("a Docker twin");
                    assert_eq!(Some(&twin), direct.as_ref().ok());
                    let json: Value = serde_json::from_slice(&twin).expect("json");
                    assert_eq!(json["layers"][0]["mediaType"], media);
                }
                None => {
                    assert_eq!(docker_form(&m), None);
                    assert!(matches!(direct, Err(ImageError::NoMediaType(..))));
                }
            }
        }
        // One zstd layer among gzip ones is enough to have no Docker form.
        let mixed = [layer(), with(LayerEncoding::Zstd)];
        let m = manifest_json(ManifestForm::Oci, (&config, 9), &mixed).expect("oci");
        assert_eq!(docker_form(&m), None);
    }

    #[test]
    fn only_manifest_documents_have_a_manifest_media_type() {
        assert_eq!(manifest_media_type(b"not json"), None);
        assert_eq!(manifest_media_type(b"{}"), None);
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"mediaType":"text/plain"}"#),
            None
        );
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"manifests":[]}"#),
            Some(OCI_INDEX)
        );
        // A config blob is JSON too, but not a manifest.
        let run = RunConfig::default();
        assert_eq!(
            manifest_media_type(&config_json(&run, &[layer()]).expect("c")),
            None
        );
    }
}
