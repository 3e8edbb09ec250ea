//! Docker Registry token authentication, the registry's half: the `Bearer` challenge that
//! names the scope a request needs, and the check of the JWT a client comes back with.
//!
//! A token is accepted when its signature checks out against one of the issuer's keys, its
//! `iss` is the configured issuer, its `aud` (a string or a list) holds the service, and it
//! is inside `nbf`..`exp` give or take [`LEEWAY_SECONDS`]; it then grants exactly what its
//! `access` claim lists. The key is the one its header names: by `kid`, the libtrust key id
//! distribution, GitLab and docker_auth send (or a JWKS key's own `kid`), or by `x5c`, whose
//! first certificate is one of the configured ones or leads to one of them as a root. Only
//! asymmetric algorithms are taken (RS*, PS*, ES256/384, EdDSA): `alg: none` and HMAC never
//! verify. Every failure is a reason for the 401 that carries the challenge again, never an
//! error of the server.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use data_encoding::BASE32_NOPAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// Clock skew tolerated on `exp` and `nbf`, as distribution does.
pub const LEEWAY_SECONDS: u64 = 60;

/// A token longer than this is refused before it is parsed.
const MAX_TOKEN: usize = 64 * 1024;

/// The algorithms a token may be signed with.
const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// What tokens must carry and the keys that may sign them, as last read.
pub struct Verifier {
    /// The `aud` tokens must hold; the challenge's `service`.
    service: String,
    /// The `iss` tokens must carry.
    issuer: String,
    /// Where clients get tokens: the challenge's `realm` (`None`: the built-in issuer's
    /// `/token` on the address the client used).
    realm: Option<String>,
    /// Keys by id: the libtrust id of each PEM key and certificate, a JWKS key's `kid`.
    keys: HashMap<String, DecodingKey>,
    /// The configured certificates (DER) and their keys, for tokens that name theirs by `x5c`.
    certificates: Vec<(Vec<u8>, DecodingKey)>,
    /// The same certificates as roots an `x5c` chain may lead to.
    anchors: Vec<rustls_pki_types::TrustAnchor<'static>>,
    /// Tokens verified already, by their sha256, with their `exp`: a client sends its token
    /// with every request of a push, and a signature check costs more than the request.
    /// Forgotten with this verifier when the keys are read again.
    verified: Mutex<HashMap<[u8; 32], Remembered>>,
}

/// A verified token's grants and its `exp`.
type Remembered = (Arc<Grants>, u64);

/// Verified tokens remembered at most; the set starts over when full.
const VERIFIED_MAX: usize = 1024;

/// What a verified token grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Its `sub`: who it was issued to (empty for an anonymous token).
    pub subject: String,
    access: Vec<Access>,
}

/// One entry of a token's `access` claim.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
struct Access {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    #[serde(default)]
    actions: Vec<String>,
}

#[derive(Deserialize)]
struct Claims {
    exp: u64,
    nbf: Option<u64>,
    #[serde(default)]
    sub: String,
    #[serde(default)]
    access: Vec<Access>,
}

impl Grants {
    /// Whether the token lets its bearer do `action` (`pull`, `push`, `delete`) on
    /// repository `name`.
    pub fn allows(&self, name: &str, action: &str) -> bool {
        self.grants("repository", name, action)
    }

    /// Whether the token lets its bearer list the catalog (`registry:catalog:*`).
    pub fn lists_catalog(&self) -> bool {
        self.grants("registry", "catalog", "*")
    }

    fn grants(&self, kind: &str, name: &str, action: &str) -> bool {
        self.access.iter().any(|a| {
            a.kind == kind && a.name == name && a.actions.iter().any(|x| x == action || x == "*")
        })
    }
}

impl Verifier {
    /// Reads the issuer's keys: `bundle`, PEM certificates and public keys (RSA, EC,
    /// Ed25519), `jwks`, a JSON Web Key Set, and `own`, the built-in issuer's public key
    /// (PEM); at least one key in all.
    pub fn load(
        service: &str,
        issuer: &str,
        realm: Option<&str>,
        bundle: Option<&Path>,
        jwks: Option<&Path>,
        own: Option<&str>,
    ) -> Result<Verifier, String> {
        let mut verifier = Verifier {
            service: service.to_owned(),
            issuer: issuer.to_owned(),
            realm: realm.map(str::to_owned),
            keys: HashMap::new(),
            certificates: Vec::new(),
            anchors: Vec::new(),
            verified: Mutex::new(HashMap::new()),
        };
        if let Some(path) = bundle {
            let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            verifier
                .add_pem(&text)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        if let Some(path) = jwks {
            let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            verifier
                .add_jwks(&text)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        if let Some(own) = own {
            verifier.add_pem(own.as_bytes())?;
        }
        if verifier.keys.is_empty() {
            return Err("no key to verify tokens with: give a PEM bundle or a JWKS file".into());
        }
        Ok(verifier)
    }

    /// Adds the certificates and public keys of a PEM bundle.
    fn add_pem(&mut self, text: &[u8]) -> Result<(), String> {
        let blocks = pem::parse_many(text).map_err(|e| format!("not PEM: {e}"))?;
        for block in blocks {
            match block.tag() {
                "CERTIFICATE" => {
                    let der = rustls_pki_types::CertificateDer::from(block.contents());
                    let cert = webpki::EndEntityCert::try_from(&der)
                        .map_err(|e| format!("a certificate that does not parse: {e:?}"))?;
                    let spki = cert.subject_public_key_info();
                    let key = public_key(spki.as_ref())?;
                    let anchor = webpki::anchor_from_trusted_cert(&der)
                        .map_err(|e| format!("a certificate that is no root: {e:?}"))?
                        .to_owned();
                    self.anchors.push(anchor);
                    self.certificates
                        .push((block.contents().to_vec(), key.clone()));
                    self.keys.insert(libtrust_key_id(spki.as_ref()), key);
                }
                "PUBLIC KEY" => {
                    let key = public_key(block.contents())?;
                    self.keys.insert(libtrust_key_id(block.contents()), key);
                }
                other => {
                    return Err(format!(
                        "a PEM block of {other}: want CERTIFICATE or PUBLIC KEY"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Adds the keys of a JWKS document, by their `kid`.
    fn add_jwks(&mut self, text: &[u8]) -> Result<(), String> {
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
        for jwk in &set.keys {
            let Some(kid) = &jwk.common.key_id else {
                return Err("a key without a kid".into());
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid}: {e}"))?;
            self.keys.insert(kid.clone(), key);
        }
        Ok(())
    }

    /// How many keys tokens may be signed with.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Checks `token`; what it grants, or why it is refused (for the log and the 401).
    pub fn verify(&self, token: &str) -> Result<Arc<Grants>, String> {
        self.verify_at(token, jsonwebtoken::get_current_timestamp())
    }

    /// `verify` at `now` (seconds since the epoch).
    fn verify_at(&self, token: &str, now: u64) -> Result<Arc<Grants>, String> {
        if token.len() > MAX_TOKEN {
            return Err("token too long".into());
        }
        let id: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((grants, exp)) = super::auth::lock(&self.verified).get(&id)
            && now <= exp.saturating_add(LEEWAY_SECONDS)
        {
            return Ok(grants.clone());
        }
        let (grants, exp) = self.check(token, now)?;
        let grants = Arc::new(grants);
        let mut remembered = super::auth::lock(&self.verified);
        if remembered.len() >= VERIFIED_MAX {
            remembered.clear();
        }
        remembered.insert(id, (grants.clone(), exp));
        Ok(grants)
    }

    /// The signature and claims check of `verify`; what the token grants and its `exp`.
    fn check(&self, token: &str, now: u64) -> Result<(Grants, u64), String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        let key = match (&header.x5c, &header.kid) {
            (Some(chain), _) => &self.chain_key(chain, now)?,
            (None, Some(kid)) => self
                .keys
                .get(kid)
                .ok_or_else(|| format!("signed by an unknown key {kid:?}"))?,
            (None, None) => return Err("the token names no key (kid or x5c)".into()),
        };
        // Only the header's algorithm, and only an asymmetric one: the crate then also
        // refuses a key of another family than the algorithm's.
        if !ALGORITHMS.contains(&header.alg) {
            return Err(format!("tokens signed with {:?} are not taken", header.alg));
        }
        let mut validation = Validation::new(header.alg);
        // exp and nbf are checked below, at `now`, as the remembered tokens are.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.service]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| format!("token refused: {e}"))?;
        if now > data.claims.exp.saturating_add(LEEWAY_SECONDS) {
            return Err("token refused: expired".into());
        }
        if data
            .claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECONDS))
        {
            return Err("token refused: not valid yet".into());
        }
        let grants = Grants {
            subject: data.claims.sub,
            access: data.claims.access,
        };
        Ok((grants, data.claims.exp))
    }

    /// Whether clients are sent to a realm of the configuration's (else to the built-in
    /// issuer on the address they used).
    pub fn has_realm(&self) -> bool {
        self.realm.is_some()
    }

    /// The key of an `x5c` chain: its first certificate's, if that is one of the bundle's, or
    /// if the chain leads from it to one of them (the others given as intermediates; any key
    /// usage, as distribution takes), checked at `now`.
    fn chain_key(&self, chain: &[String], now: u64) -> Result<DecodingKey, String> {
        if chain.is_empty() || chain.len() > 8 {
            return Err("an x5c chain of no or too many certificates".into());
        }
        let ders = chain
            .iter()
            .map(|c| data_encoding::BASE64.decode(c.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "an x5c certificate that is not base64")?;
        if let Some((_, key)) = self.certificates.iter().find(|(c, _)| *c == ders[0]) {
            return Ok(key.clone());
        }
        let leaf = rustls_pki_types::CertificateDer::from(ders[0].as_slice());
        let intermediates: Vec<rustls_pki_types::CertificateDer<'_>> = ders[1..]
            .iter()
            .map(|d| rustls_pki_types::CertificateDer::from(d.as_slice()))
            .collect();
        let cert = webpki::EndEntityCert::try_from(&leaf)
            .map_err(|e| format!("an x5c certificate that does not parse: {e:?}"))?;
        let time =
            rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(now));
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &intermediates,
            time,
            AnyUsage,
            None,
            None,
        )
        .map_err(|e| format!("signed by a certificate that is not trusted: {e:?}"))?;
        public_key(cert.subject_public_key_info().as_ref())
    }

    /// The `WWW-Authenticate` value for a request that needs `scope` (none for `/v2/`),
    /// with the `error` of a token that was sent and refused (`invalid_token`,
    /// `insufficient_scope`).
    /// `own_realm` is the built-in issuer's URL, for a verifier configured without a realm.
    pub fn challenge(&self, own_realm: &str, scope: Option<&str>, error: Option<&str>) -> String {
        let realm = self.realm.as_deref().unwrap_or(own_realm);
        let mut value = format!("Bearer realm=\"{realm}\",service=\"{}\"", self.service);
        if let Some(scope) = scope {
            value.push_str(&format!(",scope=\"{scope}\""));
        }
        if let Some(error) = error {
            value.push_str(&format!(",error=\"{error}\""));
        }
        value
    }
}

/// Any extended key usage (or none): a token signer's certificate is no TLS certificate.
struct AnyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, _: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

/// A verifying key from a DER SubjectPublicKeyInfo: RSA, EC or Ed25519, as the crate reads
/// them from PEM.
fn public_key(spki: &[u8]) -> Result<DecodingKey, String> {
    let pem = pem::encode(&pem::Pem::new("PUBLIC KEY", spki.to_vec()));
    DecodingKey::from_rsa_pem(pem.as_bytes())
        .or_else(|_| DecodingKey::from_ec_pem(pem.as_bytes()))
        .or_else(|_| DecodingKey::from_ed_pem(pem.as_bytes()))
        .map_err(|e| format!("a public key that is not RSA, EC or Ed25519: {e}"))
}

/// The libtrust key id of a public key (DER SubjectPublicKeyInfo): the first 30 bytes of its
/// sha256, base32 without padding, in 12 groups of 4 joined by `:`.
pub fn libtrust_key_id(spki: &[u8]) -> String {
    let hash = Sha256::digest(spki);
    let text = BASE32_NOPAD.encode(&hash[..30]);
    let groups: Vec<&str> = (0..12).map(|i| &text[i * 4..i * 4 + 4]).collect();
    groups.join(":")
}

/// The scope a request needs: `repository:NAME:ACTIONS`, with the actions distribution
/// asks for (a push asks for pull too: a client pushing layers reads them back).
pub fn repository_scope(name: &str, action: &str) -> String {
    match action {
        "push" => format!("repository:{name}:pull,push"),
        other => format!("repository:{name}:{other}"),
    }
}

/// The scope of the catalog.
pub const CATALOG_SCOPE: &str = "registry:catalog:*";

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use rcgen::PublicKeyData;
    use serde_json::{Value, json};

    /// A key pair of the issuer's: its signing key, and its public key as PEM.
    struct Issuer {
        alg: Algorithm,
        signing: EncodingKey,
        public_pem: String,
        spki: Vec<u8>,
        cert: Option<(String, Vec<u8>)>,
    }

    fn issuer(alg: Algorithm) -> Issuer {
        let (rcgen_alg, encoding): (_, fn(&[u8]) -> _) = match alg {
            Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, EncodingKey::from_ec_pem),
            Algorithm::EdDSA => (&rcgen::PKCS_ED25519, EncodingKey::from_ed_pem),
            _ => unreachable!("test keys are EC or Ed25519"),
        };
        let pair = rcgen::KeyPair::generate_for(rcgen_alg).expect("key");
        let signing = encoding(pair.serialize_pem().as_bytes()).expect("signing key");
        let spki = pair.subject_public_key_info();
        let params = rcgen::CertificateParams::new(vec!["issuer.test".to_owned()]).expect("params");
        let cert = params.self_signed(&pair).expect("cert");
        Issuer {
            alg,
            signing,
            public_pem: pem::encode(&pem::Pem::new("PUBLIC KEY", spki.clone())),
            spki,
            cert: Some((cert.pem(), cert.der().to_vec())),
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn claims(access: Value) -> Value {
        json!({"iss": "issuer", "aud": "registry", "sub": "alice", "exp": now() + 300,
               "nbf": now() - 5, "iat": now() - 5, "access": access})
    }

    fn sign(issuer: &Issuer, kid: Option<String>, claims: &Value) -> String {
        let mut header = Header::new(issuer.alg);
        header.kid = kid;
        jsonwebtoken::encode(&header, claims, &issuer.signing).expect("sign")
    }

    fn verifier(pem: &str) -> Verifier {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bundle.pem");
        std::fs::write(&path, pem).expect("write");
        Verifier::load(
            "registry",
            "issuer",
            Some("https://auth.test/token"),
            Some(&path),
            None,
            None,
        )
        .expect("load")
    }

    #[test]
    fn the_libtrust_key_id_is_what_distribution_computes() {
        // openssl's public key; the id computed by a separate Python implementation.
        let pem = "-----BEGIN PUBLIC KEY-----\n\
            MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEdM2g/poHTrKWqslwKzvxfF1AkkwB\n\
            cgqVw3T7KaVJESmPwkZV91fCVwriBFQbR33huY4yK4tJBWCA8mZmCe+dEg==\n\
            -----END PUBLIC KEY-----\n";
        let der = pem::parse(pem).expect("pem").into_contents();
        assert_eq!(
            libtrust_key_id(&der),
            "KQNE:RFMT:2LNP:FO7R:HVY2:FE7C:JVDU:FEXS:LB5L:65YW:GUNA:2ZAY"
        );
    }

    /// A token grants exactly its `access` claim, signed by a key named by its libtrust id,
    /// with ES256 and EdDSA, from a public key or a certificate, and `aud` as a list too.
    #[test]
    fn a_token_grants_exactly_its_access_claim() {
        for alg in [Algorithm::ES256, Algorithm::EdDSA] {
            let i = issuer(alg);
            let kid = libtrust_key_id(&i.spki);
            let access = json!([{"type": "repository", "name": "a", "actions": ["pull"]}]);
            for bundle in [i.public_pem.clone(), i.cert.clone().expect("cert").0] {
                let v = verifier(&bundle);
                let grants = v
                    .verify(&sign(&i, Some(kid.clone()), &claims(access.clone())))
                    .expect("valid");
                assert_eq!(grants.subject, "alice");
                assert!(grants.allows("a", "pull"));
                assert!(!grants.allows("a", "push"), "pull only");
                assert!(!grants.allows("b", "pull"), "a only");
                assert!(!grants.allows("a/b", "pull"));
                assert!(!grants.lists_catalog());
            }
            let v = verifier(&i.public_pem);
            let mut listed = claims(json!([
                {"type": "registry", "name": "catalog", "actions": ["*"]},
                {"type": "repository", "name": "b", "actions": ["pull", "push"]}]));
            listed["aud"] = json!(["other", "registry"]);
            let grants = v
                .verify(&sign(&i, Some(kid.clone()), &listed))
                .expect("aud list");
            assert!(
                grants.lists_catalog()
                    && grants.allows("b", "push")
                    && !grants.allows("b", "delete")
            );
        }
    }

    /// Every way a token can be wrong is a refusal with a reason, never a panic.
    #[test]
    fn bad_tokens_are_refused() {
        let i = issuer(Algorithm::ES256);
        let other = issuer(Algorithm::ES256);
        let kid = libtrust_key_id(&i.spki);
        let v = verifier(&i.public_pem);
        let ok = claims(json!([{"type": "repository", "name": "a", "actions": ["pull"]}]));
        assert!(v.verify(&sign(&i, Some(kid.clone()), &ok)).is_ok());
        let with = |key: &str, value: Value| {
            let mut c = ok.clone();
            c[key] = value;
            c
        };
        let cases = [
            (
                "expired",
                sign(&i, Some(kid.clone()), &with("exp", json!(now() - 120))),
            ),
            (
                "not yet",
                sign(&i, Some(kid.clone()), &with("nbf", json!(now() + 120))),
            ),
            (
                "wrong aud",
                sign(&i, Some(kid.clone()), &with("aud", json!("elsewhere"))),
            ),
            (
                "wrong iss",
                sign(&i, Some(kid.clone()), &with("iss", json!("mallory"))),
            ),
            (
                "no exp",
                sign(&i, Some(kid.clone()), &{
                    let mut c = ok.clone();
                    c.as_object_mut().expect("object").remove("exp");
                    c
                }),
            ),
            ("wrong key, its kid", sign(&other, Some(kid.clone()), &ok)),
            (
                "unknown kid",
                sign(&other, Some(libtrust_key_id(&other.spki)), &ok),
            ),
            ("no kid", sign(&i, None, &ok)),
        ];
        for (what, token) in cases {
            assert!(v.verify(&token).is_err(), "{what} was accepted");
        }
        // alg none, HS256 with the public key as the secret, garbage.
        let b64 = |v: &Value| data_encoding::BASE64URL_NOPAD.encode(v.to_string().as_bytes());
        let none = format!("{}.{}.", b64(&json!({"alg": "none", "kid": kid})), b64(&ok));
        assert!(v.verify(&none).is_err(), "alg none");
        let mut hs = Header::new(Algorithm::HS256);
        hs.kid = Some(kid.clone());
        let forged =
            jsonwebtoken::encode(&hs, &ok, &EncodingKey::from_secret(i.public_pem.as_bytes()))
                .expect("sign");
        assert!(v.verify(&forged).is_err(), "HS256 with the public key");
        let good = sign(&i, Some(kid.clone()), &ok);
        // Fuzzed: every byte of a good token changed, and every prefix.
        let mut state = 0x2545_f491_u32;
        for n in 0..good.len() {
            let mut bytes = good.clone().into_bytes();
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            bytes[n] = (state % 256) as u8;
            if bytes[n] != good.as_bytes()[n] {
                let t = String::from_utf8_lossy(&bytes);
                assert!(
                    v.verify(&t).is_err() || t == good,
                    "byte {n} changed was accepted"
                );
            }
            let _ = v.verify(&good[..n]);
        }
        assert!(v.verify(&"a.".repeat(40_000)).is_err());
    }

    /// Key rotation: a bundle holding the old and the new key takes both; the next bundle,
    /// without the old one, refuses the tokens it signed. `x5c` names a configured
    /// certificate; one not configured is refused.
    #[test]
    fn rotated_keys_and_x5c() {
        let old = issuer(Algorithm::ES256);
        let new = issuer(Algorithm::ES256);
        let ok = claims(json!([]));
        let old_token = sign(&old, Some(libtrust_key_id(&old.spki)), &ok);
        let new_token = sign(&new, Some(libtrust_key_id(&new.spki)), &ok);
        let both = verifier(&format!("{}{}", old.public_pem, new.public_pem));
        assert_eq!(both.keys(), 2);
        assert!(both.verify(&old_token).is_ok() && both.verify(&new_token).is_ok());
        let rotated = verifier(&new.public_pem);
        assert!(rotated.verify(&old_token).is_err(), "rotated out");
        assert!(rotated.verify(&new_token).is_ok());

        let (cert_pem, cert_der) = new.cert.clone().expect("cert");
        let v = verifier(&cert_pem);
        let mut header = Header::new(Algorithm::ES256);
        header.x5c = Some(vec![data_encoding::BASE64.encode(&cert_der)]);
        let token = jsonwebtoken::encode(&header, &ok, &new.signing).expect("sign");
        assert!(v.verify(&token).is_ok(), "x5c of a configured certificate");
        let (_, other_der) = old.cert.clone().expect("cert");
        header.x5c = Some(vec![data_encoding::BASE64.encode(&other_der)]);
        let token = jsonwebtoken::encode(&header, &ok, &old.signing).expect("sign");
        assert!(v.verify(&token).is_err(), "x5c of another certificate");
    }

    /// A token whose `x5c` chain leads from its signer to a root of the bundle (through an
    /// intermediate it carries) verifies; one under another root, or with a certificate out
    /// of its validity at `now`, does not.
    #[test]
    fn an_x5c_chain_leads_to_a_root_of_the_bundle() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca = |name: &str, parent: Option<(&CertificateParams, &KeyPair)>| {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
            let mut params = CertificateParams::new(vec![]).expect("params");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let cert = match parent {
                None => params.self_signed(&key),
                Some((p, k)) => params.signed_by(&key, &rcgen::Issuer::from_params(p, k)),
            }
            .expect("cert");
            (params, key, cert)
        };
        let (root_p, root_k, root) = ca("root", None);
        let (mid_p, mid_k, mid) = ca("intermediate", Some((&root_p, &root_k)));
        let signer_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut signer_p = CertificateParams::new(vec![]).expect("params");
        signer_p
            .distinguished_name
            .push(rcgen::DnType::CommonName, "token signer");
        signer_p.not_before = rcgen::date_time_ymd(2025, 1, 1);
        signer_p.not_after = rcgen::date_time_ymd(2035, 1, 1);
        let signer = signer_p
            .signed_by(&signer_key, &rcgen::Issuer::from_params(&mid_p, &mid_k))
            .expect("signer");
        let signing = EncodingKey::from_ec_pem(signer_key.serialize_pem().as_bytes()).expect("key");
        let v = verifier(&root.pem());
        let token = |chain: &[&[u8]], now: u64| {
            let mut header = Header::new(Algorithm::ES256);
            header.x5c = Some(
                chain
                    .iter()
                    .map(|c| data_encoding::BASE64.encode(c))
                    .collect(),
            );
            let mut c = claims(json!([{"type": "repository", "name": "a", "actions": ["pull"]}]));
            c["exp"] = json!(now + 300);
            c["nbf"] = json!(now - 5);
            (
                jsonwebtoken::encode(&header, &c, &signing).expect("sign"),
                now,
            )
        };
        let (t, at) = token(&[signer.der(), mid.der()], now());
        assert!(
            v.verify_at(&t, at)
                .expect("chain to the root")
                .allows("a", "pull")
        );
        let (t, at) = token(&[signer.der()], now());
        assert!(v.verify_at(&t, at).is_err(), "the intermediate is missing");
        // Past the signer's not_after (2035), and under another root.
        let later = 2_100_000_000;
        let (t, _) = token(&[signer.der(), mid.der()], later);
        assert!(
            v.verify_at(&t, later).is_err(),
            "an expired signer certificate"
        );
        let (_, _, other) = ca("other root", None);
        let elsewhere = verifier(&other.pem());
        let (t, at) = token(&[signer.der(), mid.der()], now());
        assert!(elsewhere.verify_at(&t, at).is_err(), "under another root");
    }

    #[test]
    fn challenges_name_the_scope() {
        let i = issuer(Algorithm::ES256);
        let v = verifier(&i.public_pem);
        assert_eq!(
            v.challenge("unused", Some(&repository_scope("a/b", "push")), None),
            "Bearer realm=\"https://auth.test/token\",service=\"registry\",scope=\"repository:a/b:pull,push\""
        );
        assert!(
            v.challenge("unused", Some(CATALOG_SCOPE), Some("invalid_token"))
                .ends_with(",scope=\"registry:catalog:*\",error=\"invalid_token\"")
        );
        assert!(
            Verifier::load("r", "i", Some("x"), None, None, None).is_err(),
            "no keys"
        );
    }

    /// A JWKS file's keys are found by their own `kid`, beside a PEM bundle's.
    #[test]
    fn jwks_keys_verify_by_their_kid() {
        let i = issuer(Algorithm::ES256);
        let pem_only = issuer(Algorithm::ES256);
        // A P-256 SubjectPublicKeyInfo ends with the point: 0x04, then x and y.
        let point = &i.spki[i.spki.len() - 65..];
        assert_eq!(point[0], 4);
        let b64 = |b: &[u8]| data_encoding::BASE64URL_NOPAD.encode(b);
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "gitlab-1", "alg": "ES256",
            "use": "sig", "x": b64(&point[1..33]), "y": b64(&point[33..])}]});
        let dir = tempfile::tempdir().expect("tempdir");
        let (bundle, set) = (dir.path().join("b.pem"), dir.path().join("k.jwks"));
        std::fs::write(&bundle, &pem_only.public_pem).expect("write");
        std::fs::write(&set, jwks.to_string()).expect("write");
        let v = Verifier::load(
            "registry",
            "issuer",
            Some("r"),
            Some(&bundle),
            Some(&set),
            None,
        )
        .expect("load");
        assert_eq!(v.keys(), 2);
        let ok = claims(json!([{"type": "repository", "name": "a", "actions": ["pull"]}]));
        assert!(v.verify(&sign(&i, Some("gitlab-1".into()), &ok)).is_ok());
        assert!(
            v.verify(&sign(&pem_only, Some(libtrust_key_id(&pem_only.spki)), &ok))
                .is_ok()
        );
        assert!(
            v.verify(&sign(&pem_only, Some("gitlab-1".into()), &ok))
                .is_err()
        );
        std::fs::write(&set, "{\"keys\": [{\"kty\": \"EC\"}]}").expect("write");
        assert!(Verifier::load("registry", "issuer", Some("r"), None, Some(&set), None).is_err());
    }

    /// A token verified once is remembered until its `exp` (with the leeway), not after,
    /// and the leeway holds both ways at the edges.
    #[test]
    fn remembered_tokens_expire_with_their_exp() {
        let i = issuer(Algorithm::ES256);
        let v = verifier(&i.public_pem);
        let kid = Some(libtrust_key_id(&i.spki));
        let t0 = now();
        let mut c = claims(json!([{"type": "repository", "name": "a", "actions": ["pull"]}]));
        c["exp"] = json!(t0 + 100);
        c["nbf"] = json!(t0 + 10);
        let token = sign(&i, kid, &c);
        let edge = t0 + 100 + LEEWAY_SECONDS;
        assert!(
            v.verify_at(&token, t0 + 10 - LEEWAY_SECONDS - 1).is_err(),
            "before nbf"
        );
        assert!(
            v.verify_at(&token, t0 + 10 - LEEWAY_SECONDS).is_ok(),
            "nbf, leeway"
        );
        assert!(
            v.verify_at(&token, edge).is_ok(),
            "remembered, at exp + leeway"
        );
        assert!(
            v.verify_at(&token, edge + 1).is_err(),
            "remembered, after exp"
        );
        let fresh = verifier(&i.public_pem);
        assert!(
            fresh.verify_at(&token, edge + 1).is_err(),
            "not remembered, after exp"
        );
        assert!(
            fresh.verify_at(&token, edge).is_ok(),
            "not remembered, at exp + leeway"
        );
    }
}
