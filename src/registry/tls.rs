//! TLS with rustls (the `ring` provider: it builds with a C compiler alone). The certificate
//! chain and key are PEM files, read again when they change on disk (or on SIGHUP) without a
//! restart: each new connection takes the configuration current when it arrives, and
//! connections already open keep theirs. A set of files that does not load (a key and a chain
//! that do not match, halfway through a swap) is logged and the previous configuration kept.
//!
//! With a client CA, every client must present a certificate it signed; there is no
//! anonymous TLS client then.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};

/// The files TLS is configured from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate, then the intermediates up to (not including) the root.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates that sign the client certificates to accept; `None`: no client
    /// certificates asked for.
    pub client_ca: Option<PathBuf>,
}

/// The TLS configuration in force, and the files it is reloaded from.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// What the files held when last loaded, so events that changed nothing (a touch, another
    /// file in the folder) are not logged as reloads.
    loaded: RwLock<Vec<u8>>,
}

impl Tls {
    /// Loads the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, String> {
        let (config, bytes) = build(&files)?;
        Ok(Arc::new(Tls {
            files,
            current: RwLock::new(Arc::new(config)),
            loaded: RwLock::new(bytes),
        }))
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(super::read(&self.current).clone())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again; `Ok(true)` if they changed and the new configuration is in
    /// force, `Ok(false)` if they hold what they held. On error the old one stays.
    pub fn reload(&self) -> Result<bool, String> {
        let (config, bytes) = build(&self.files)?;
        if *super::read(&self.loaded) == bytes {
            return Ok(false);
        }
        *super::write(&self.current) = Arc::new(config);
        *super::write(&self.loaded) = bytes;
        Ok(true)
    }

    /// Reloads on SIGHUP, and when anything changes in the folders of the files (a
    /// certificate renewed in place, or swapped in by rename as Kubernetes secrets are).
    pub fn watch(self: &Arc<Self>) -> Result<(), String> {
        let files: Vec<&Path> = [
            Some(&self.files.cert),
            Some(&self.files.key),
            self.files.client_ca.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
        .collect();
        let tls = Arc::downgrade(self);
        super::watch::watch(&files, "TLS files", move |why| {
            let Some(tls) = tls.upgrade() else {
                return false;
            };
            match tls.reload() {
                Ok(true) => {
                    tracing::info!(cert = %tls.files.cert.display(), why, "TLS certificate reloaded")
                }
                Ok(false) => tracing::debug!(why, "TLS files unchanged"),
                Err(error) => tracing::warn!(
                    %error, why,
                    "TLS files do not load; the previous certificate stays in use"
                ),
            }
            true
        })
    }
}

/// The configuration the files describe, and their bytes.
fn build(files: &TlsFiles) -> Result<(ServerConfig, Vec<u8>), String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let (cert_pem, key_pem) = (read(&files.cert)?, read(&files.key)?);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: no PEM private key in it: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let mut bytes = [cert_pem, key_pem].concat();
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let ca_pem = read(ca)?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&ca_pem) {
                let cert =
                    cert.map_err(|e| format!("{}: not a PEM certificate: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no certificate in it", ca.display()));
            }
            bytes.extend_from_slice(&ca_pem);
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "{} and {} do not make a certificate and its key: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((config, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.cert.pem()).expect("write");
        std::fs::write(&k, cert.signing_key.serialize_pem()).expect("write");
        (c, k)
    }

    #[test]
    fn a_chain_and_key_that_do_not_match_are_refused_and_the_old_ones_kept() {
        let dir = tempfile::tempdir().expect("tmp");
        let (cert, key) = write_pair(dir.path(), "a");
        let tls = Tls::load(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
        })
        .expect("loads");
        assert!(
            !tls.reload().expect("same files"),
            "unchanged files are no reload"
        );
        let (_, other_key) = write_pair(dir.path(), "b");
        std::fs::copy(&other_key, &key).expect("copy");
        let err = tls.reload().expect_err("a key of another certificate");
        assert!(
            err.contains("do not make a certificate and its key"),
            "{err}"
        );
        std::fs::write(&cert, "not pem").expect("write");
        let err = Tls::load(TlsFiles {
            cert,
            key,
            client_ca: None,
        })
        .err()
        .expect("refused");
        assert!(err.contains("a.crt"), "{err}");
    }
}
