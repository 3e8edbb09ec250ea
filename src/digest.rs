//! Content digests (`sha256:<hex>`, `sha512:<hex>`) and a writer that hashes what passes
//! through it.
//!
//! This module never touches the disk: it is the vocabulary the store, the packer and the
//! registry share.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use sha2::{Digest as _, Sha256, Sha512};
use tokio::io::AsyncWrite;

/// A hash algorithm a digest may name: the two the OCI image spec registers. Everything quinistry
/// makes itself is sha256 (the canonical algorithm); sha512 is accepted wherever a client names
/// content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Algorithm {
    #[default]
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The name used in digest strings and in the store's `blobs/<algorithm>/` folder.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the lowercase hex encoding of this algorithm's output.
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    /// Every algorithm, in a fixed order (the store's `blobs/` folders).
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];
}

impl FromStr for Algorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| format!("unsupported digest algorithm {s:?} (sha256 and sha512 are)"))
    }
}

/// Why a string is not a digest we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0:?} has no ':' between algorithm and hex")]
    MissingSeparator(String),
    #[error("digest {0:?} uses unsupported algorithm {1:?} (sha256 and sha512 are supported)")]
    UnsupportedAlgorithm(String, String),
    #[error("digest {0:?} must have {1} hex characters, has {2}")]
    WrongLength(String, usize, usize),
    #[error("digest {0:?} must be lowercase hex [0-9a-f]")]
    NotLowercaseHex(String),
}

/// A validated digest such as `sha256:e3b0c442…`. Construction guarantees the hex part has the
/// algorithm's length and is lowercase, so it is safe to use as a file name.
///
/// ```
/// use quinistry::digest::Digest;
///
/// let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
///     .parse()
///     .unwrap();
/// assert_eq!(d, Digest::sha256_of(b""));
/// assert!("sha256:../../etc/passwd".parse::<Digest>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    /// Which hash produced `hex`.
    algorithm: Algorithm,
    /// Lowercase hex of the hash; exactly `algorithm.hex_len()` characters.
    hex: String,
}

impl Digest {
    /// The sha256 digest of a byte slice (for small documents: configs, manifests).
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest::of(Algorithm::Sha256, bytes)
    }

    /// The digest of a byte slice with `algorithm`.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut h = Hasher::with(algorithm);
        h.update(bytes);
        h.finish().0
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part, without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::MissingSeparator(s.to_owned()))?;
        let algorithm: Algorithm = alg
            .parse()
            .map_err(|_| DigestError::UnsupportedAlgorithm(s.to_owned(), alg.into()))?;
        if hex.len() != algorithm.hex_len() {
            return Err(DigestError::WrongLength(
                s.to_owned(),
                algorithm.hex_len(),
                hex.len(),
            ));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::NotLowercaseHex(s.to_owned()));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental hash plus a byte count: the state every hashing stage keeps.
#[derive(Clone, Default)]
pub struct Hasher {
    state: State,
    len: u64,
}

/// The running hash of one algorithm.
#[derive(Clone)]
enum State {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Default for State {
    fn default() -> Self {
        State::Sha256(Sha256::new())
    }
}

impl Hasher {
    /// A sha256 hasher: what everything quinistry makes is named by.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(algorithm: Algorithm) -> Self {
        let state = match algorithm {
            Algorithm::Sha256 => State::Sha256(Sha256::new()),
            Algorithm::Sha512 => State::Sha512(Sha512::new()),
        };
        Hasher { state, len: 0 }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.state {
            State::Sha256(_) => Algorithm::Sha256,
            State::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.state {
            State::Sha256(h) => h.update(bytes),
            State::Sha512(h) => h.update(bytes),
        }
        self.len += bytes.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The running state as bytes, for [`Hasher::resume`]: an upload that one replica began
    /// and another goes on with, without reading back what was hashed.
    pub fn save(&self) -> Vec<u8> {
        use sha2::digest::common::hazmat::SerializableState;
        let (tag, state) = match &self.state {
            State::Sha256(h) => (0u8, h.serialize().to_vec()),
            State::Sha512(h) => (1u8, h.serialize().to_vec()),
        };
        let mut out = vec![tag];
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&state);
        out
    }

    /// The hasher `save` described; `None` for bytes it did not make.
    pub fn resume(saved: &[u8]) -> Option<Hasher> {
        use sha2::digest::common::hazmat::SerializableState;
        let (&tag, rest) = saved.split_first()?;
        let (len, state) = rest.split_at_checked(8)?;
        let len = u64::from_le_bytes(len.try_into().ok()?);
        let state = match tag {
            0 => State::Sha256(Sha256::deserialize(state.try_into().ok()?).ok()?),
            1 => State::Sha512(Sha512::deserialize(state.try_into().ok()?).ok()?),
            _ => return None,
        };
        Some(Hasher { state, len })
    }

    /// The digest and byte count of everything hashed.
    pub fn finish(self) -> (Digest, u64) {
        let (algorithm, raw) = match self.state {
            State::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            State::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        (
            Digest {
                algorithm,
                hex: raw,
            },
            self.len,
        )
    }
}

/// An `AsyncWrite` that forwards to `inner` and hashes exactly the bytes `inner` accepted, so the
/// digest is of what reached the next stage, never of a buffer that was only partly written.
pub struct HashingWriter<W> {
    /// Where the bytes go next (a compressor, a file).
    inner: W,
    /// Hash and count of the bytes accepted by `inner`.
    hasher: Hasher,
}

impl<W> HashingWriter<W> {
    /// Hashes with sha256.
    pub fn new(inner: W) -> Self {
        HashingWriter::with(inner, Algorithm::Sha256)
    }

    pub fn with(inner: W, algorithm: Algorithm) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::with(algorithm),
        }
    }

    /// Goes on hashing from `hasher` (what was written elsewhere before).
    pub fn resume(inner: W, hasher: Hasher) -> Self {
        HashingWriter { inner, hasher }
    }

    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    pub fn algorithm(&self) -> Algorithm {
        self.hasher.algorithm()
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.hasher.len()
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Gives back the inner writer and the digest and length of all bytes written through.
    pub fn into_parts(self) -> (W, Digest, u64) {
        let (digest, len) = self.hasher.finish();
        (self.inner, digest, len)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for HashingWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.hasher.update(&buf[..n]);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_saved_hasher_resumes_where_it_stopped() {
        for algorithm in Algorithm::ALL {
            let mut h = Hasher::with(algorithm);
            h.update(&[7u8; 1000]);
            let saved = h.save();
            let mut resumed = Hasher::resume(&saved).expect("resume");
            resumed.update(b"more");
            let mut whole = Hasher::with(algorithm);
            whole.update(&[7u8; 1000]);
            whole.update(b"more");
            assert_eq!(resumed.finish(), whole.finish());
            assert!(Hasher::resume(&saved[..saved.len() - 1]).is_none());
            assert!(Hasher::resume(b"").is_none());
        }
    }

    use super::*;
    use tokio::io::AsyncWriteExt;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_displays_round_trip() {
        let d: Digest = EMPTY.parse().expect("valid digest");
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.hex().len(), 64);
        assert_eq!(Digest::sha256_of(b""), d);
    }

    #[test]
    fn rejects_malformed_digests_with_reasons() {
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        let cases: Vec<(String, &str)> = vec![
            ("e3b0c442".into(), "no ':'"),
            (EMPTY.replace("sha256", "md5"), "unsupported algorithm"),
            (
                EMPTY.replace("sha256", "sha512"),
                "128 hex characters, has 64",
            ),
            (EMPTY.replace("sha256", "blake3"), "unsupported algorithm"),
            (EMPTY.replace("sha256", "SHA256"), "unsupported algorithm"),
            (EMPTY[..EMPTY.len() - 1].into(), "64 hex characters, has 63"),
            (format!("{EMPTY}0"), "64 hex characters, has 65"),
            (upper, "lowercase hex"),
            (EMPTY.replace('e', "g"), "lowercase hex"),
            ("sha256:../../../../etc/passwd".into(), "64 hex characters"),
            ("".into(), "no ':'"),
        ];
        for (input, why) in cases {
            let err = input.parse::<Digest>().expect_err(&input).to_string();
            assert!(err.contains(why), "{input:?}: {err:?} should say {why:?}");
        }
    }

    #[test]
    fn sha512_digests_parse_and_hash() {
        // `printf '' | sha512sum`
        const EMPTY512: &str = "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";
        let d: Digest = EMPTY512.parse().expect("valid sha512 digest");
        assert_eq!(d.algorithm(), Algorithm::Sha512);
        assert_eq!(d.hex().len(), 128);
        assert_eq!(d.to_string(), EMPTY512);
        assert_eq!(Digest::of(Algorithm::Sha512, b""), d);
        let mut h = Hasher::with(Algorithm::Sha512);
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(h.finish().0, Digest::of(Algorithm::Sha512, b"abc"));
        assert_ne!(
            Digest::of(Algorithm::Sha512, b"abc").hex()[..64],
            *Digest::sha256_of(b"abc").hex()
        );
        assert_eq!("sha512".parse(), Ok(Algorithm::Sha512));
        assert!("md5".parse::<Algorithm>().is_err());
    }

    #[test]
    fn serde_uses_the_string_form_and_validates() {
        let d: Digest = EMPTY.parse().expect("valid digest");
        let json = serde_json::to_string(&d).expect("serialize");
        assert_eq!(json, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).expect("parse"), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:abc\"").is_err());
    }

    #[tokio::test]
    async fn hashing_writer_passes_bytes_and_hashes_them() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = HashingWriter::new(Vec::new());
        for chunk in data.chunks(7919) {
            w.write_all(chunk).await.expect("write");
        }
        w.flush().await.expect("flush");
        let (inner, digest, len) = w.into_parts();
        assert_eq!(inner, data);
        assert_eq!(len, data.len() as u64);
        assert_eq!(digest, Digest::sha256_of(&data));
    }

    /// A writer that takes at most 3 bytes a call: the hash must cover only accepted bytes.
    struct Trickle(Vec<u8>);
    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn hashing_writer_hashes_only_accepted_bytes() {
        let mut w = HashingWriter::new(Trickle(Vec::new()));
        w.write_all(b"hello, world").await.expect("write");
        let (inner, digest, len) = w.into_parts();
        assert_eq!(inner.0, b"hello, world");
        assert_eq!(len, 12);
        assert_eq!(digest, Digest::sha256_of(b"hello, world"));
    }
}
