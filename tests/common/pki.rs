//! A test certificate authority (rcgen) and the certificates it signs, for the TLS tests.

use std::path::{Path, PathBuf};

/// A test CA and what it signs.
pub struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "quinistry test CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let ca = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA");
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::write(dir.join("ca.crt"), ca.pem()).expect("write CA");
        Pki {
            ca,
            dir: dir.to_owned(),
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A certificate for 127.0.0.1 and localhost (`client`: for TLS client auth) named
    /// `name`, written as NAME.crt and NAME.key; the certificate's DER.
    pub fn issue(&self, name: &str, client: bool) -> (PathBuf, PathBuf, Vec<u8>) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("p");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let (crt, k) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&crt, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (crt, k, cert.der().to_vec())
    }
}
