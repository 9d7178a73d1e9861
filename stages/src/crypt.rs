//! Authenticated encryption of a chunk's body: AES-256-GCM or ChaCha20-Poly1305
//! (RustCrypto), sealed in place with the 16-byte tag appended.
//!
//! **Nonces are never reused under one key.** Each archive draws a random 16-byte
//! salt; the chunk key is `BLAKE3-derive_key(master key ‖ salt)`, so every archive
//! seals under its own key, and within an archive the nonce is the chunk's
//! [`seq`](crate::chunk::ChunkMeta::seq) (unique per archive by construction), padded
//! to 12 bytes. The chunk's id (BLAKE3 of its plain bytes) is the associated data, so
//! a sealed body moved under another id fails to open.
//!
//! The master key comes from a passphrase through Argon2id ([`Key::from_passphrase`])
//! or from a 32-byte key file ([`Key::from_file`]).
//!
//! ```
//! use ringpipe_stages::{chunk::{chunk_frame, ChunkMeta}, crypt::{Cipher, Key, Open, Seal}};
//! # use ringpipe_engine::{Pipeline, StageSpec};
//! let key = Key::from_bytes([7; 32]);
//! let salt = [1; 16];
//! let p = Pipeline::builder()
//!     .stage(StageSpec::with_stage("seal", Seal::new(Cipher::Aes256Gcm, &key, salt)))
//!     .stage(StageSpec::with_stage("open", Open::new(Cipher::Aes256Gcm, &key, salt)))
//!     .build()
//!     .unwrap();
//! let out = p.submit(&chunk_frame(0, b"secret")).unwrap().wait().unwrap();
//! assert_eq!(ChunkMeta::parse(&out).unwrap().1, b"secret");
//! ```

use std::path::Path;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::Aes256Gcm;
use chacha20poly1305::ChaCha20Poly1305;
use ringpipe_engine::{register, BoxError, Frame, Params, Registered, Stage};

use crate::chunk::{meta_of, ChunkError, META_LEN};

/// Registered name of [`Seal`] (parameters: [`SealParams`]).
pub const SEAL: &str = "ringpipe.seal";
/// Registered name of [`Open`] (same parameters as the seal).
pub const OPEN: &str = "ringpipe.open";
/// Bytes of the tag appended to a sealed body.
pub const TAG_LEN: usize = 16;
/// Bytes of an archive's salt.
pub const SALT_LEN: usize = 16;

/// The AEAD a [`Seal`]/[`Open`] pair uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    /// AES-256-GCM (AES-NI: about 3.3 GB/s on one core here).
    Aes256Gcm,
    /// ChaCha20-Poly1305 (no AES hardware needed).
    ChaCha20Poly1305,
}

impl Cipher {
    fn code(self) -> u8 {
        match self {
            Self::Aes256Gcm => 1,
            Self::ChaCha20Poly1305 => 2,
        }
    }
    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Aes256Gcm),
            2 => Some(Self::ChaCha20Poly1305),
            _ => None,
        }
    }
}

/// A 256-bit master key. Its bytes are overwritten when it is dropped.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        for b in &mut self.0 {
            // SAFETY: a valid, aligned `&mut u8`; volatile so the wipe is not elided.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// Why a key could not be made.
#[derive(Debug)]
pub enum KeyError {
    /// The key file could not be read.
    Io(std::io::Error),
    /// The key file does not hold exactly 32 bytes.
    BadKeyFile {
        /// Its length.
        len: usize,
    },
    /// Argon2id refused the input.
    Kdf(String),
    /// The system's random source failed.
    Random(String),
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "cannot read the key file: {e}"),
            Self::BadKeyFile { len } => write!(f, "a key file holds exactly 32 bytes, this one {len}"),
            Self::Kdf(e) => write!(f, "Argon2id: {e}"),
            Self::Random(e) => write!(f, "random source: {e}"),
        }
    }
}

impl std::error::Error for KeyError {}

impl Key {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh random key.
    pub fn random() -> Result<Self, KeyError> {
        let mut k = [0u8; 32];
        getrandom::getrandom(&mut k).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self(k))
    }

    /// Derives a key from a passphrase with Argon2id (its default cost: 19 MiB, two
    /// passes) and a salt kept with the archive.
    pub fn from_passphrase(passphrase: &[u8], salt: &[u8; SALT_LEN]) -> Result<Self, KeyError> {
        let mut k = [0u8; 32];
        argon2::Argon2::default()
            .hash_password_into(passphrase, salt, &mut k)
            .map_err(|e| KeyError::Kdf(e.to_string()))?;
        Ok(Self(k))
    }

    /// Reads a key file: exactly 32 raw bytes.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(KeyError::Io)?;
        let k: [u8; 32] =
            bytes.as_slice().try_into().map_err(|_| KeyError::BadKeyFile { len: bytes.len() })?;
        Ok(Self(k))
    }

    /// The key chunks of the archive with `salt` are sealed under.
    fn for_archive(&self, salt: &[u8; SALT_LEN]) -> [u8; 32] {
        let mut material = [0u8; 32 + SALT_LEN];
        material[..32].copy_from_slice(&self.0);
        material[32..].copy_from_slice(salt);
        blake3::derive_key("ringpipe 2026-11 chunk sealing key v1", &material)
    }
}

/// A fresh random archive salt.
pub fn random_salt() -> Result<[u8; SALT_LEN], KeyError> {
    let mut s = [0u8; SALT_LEN];
    getrandom::getrandom(&mut s).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(s)
}

enum Aead {
    Aes(Box<Aes256Gcm>),
    ChaCha(Box<ChaCha20Poly1305>),
}

impl Aead {
    fn new(cipher: Cipher, key: &Key, salt: [u8; SALT_LEN]) -> Self {
        let k = key.for_archive(&salt);
        match cipher {
            Cipher::Aes256Gcm => Self::Aes(Box::new(Aes256Gcm::new(&k.into()))),
            Cipher::ChaCha20Poly1305 => Self::ChaCha(Box::new(ChaCha20Poly1305::new(&k.into()))),
        }
    }

    fn nonce(seq: u64) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&seq.to_be_bytes());
        n
    }

    fn seal(&self, seq: u64, aad: &[u8], body: &mut [u8]) -> [u8; TAG_LEN] {
        let n = Self::nonce(seq);
        let tag = match self {
            Self::Aes(c) => c.encrypt_in_place_detached(&n.into(), aad, body),
            Self::ChaCha(c) => c.encrypt_in_place_detached(&n.into(), aad, body),
        };
        tag.expect("in-place sealing of a body under 64 GiB cannot fail").into()
    }

    fn open(&self, seq: u64, aad: &[u8], body: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
        let n = Self::nonce(seq);
        match self {
            Self::Aes(c) => c.decrypt_in_place_detached(&n.into(), aad, body, tag.into()).is_ok(),
            Self::ChaCha(c) => c.decrypt_in_place_detached(&n.into(), aad, body, tag.into()).is_ok(),
        }
    }
}

/// What [`Seal`] and [`Open`] are built from: the cipher, the master key and the
/// archive's salt (`StageSpec::process::<Seal>(SealParams::new(cipher, key, salt))`).
/// As parameter bytes they hold the master key: they live in the pipeline's segment,
/// an anonymous memfd only the pipeline's processes map.
#[derive(Clone)]
pub struct SealParams {
    cipher: Cipher,
    key: Key,
    salt: [u8; SALT_LEN],
}

impl SealParams {
    /// Sealing (or opening) with `cipher` under `key`, for the archive with `salt`.
    pub fn new(cipher: Cipher, key: &Key, salt: [u8; SALT_LEN]) -> Self {
        Self { cipher, key: key.clone(), salt }
    }
}

impl std::fmt::Debug for SealParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealParams").field("cipher", &self.cipher).field("key", &"(secret)").finish()
    }
}

impl Params for SealParams {
    fn encode(&self) -> Vec<u8> {
        let mut p = vec![self.cipher.code()];
        p.extend_from_slice(&self.key.0);
        p.extend_from_slice(&self.salt);
        p
    }
    fn decode(p: &[u8]) -> Result<Self, BoxError> {
        let bad = || BoxError::from("seal/open parameters: 1 byte cipher, 32 bytes key, 16 bytes salt");
        if p.len() != 1 + 32 + SALT_LEN {
            return Err(bad());
        }
        let cipher = Cipher::from_code(p[0]).ok_or_else(bad)?;
        let key = Key(p[1..33].try_into().expect("32 bytes"));
        Ok(Self { cipher, key, salt: p[33..].try_into().expect("16 bytes") })
    }
}

/// Seals a chunk's body in place and appends the tag. Put it after compression (and
/// after [`ChunkId`](crate::hash::ChunkId): the id is the associated data).
pub struct Seal(Aead);

impl Seal {
    /// Seals with `cipher` under `key`, for the archive with `salt`.
    pub fn new(cipher: Cipher, key: &Key, salt: [u8; SALT_LEN]) -> Self {
        Self(Aead::new(cipher, key, salt))
    }
}

impl Stage for Seal {
    fn process(&mut self, frame: &mut Frame<'_>) -> Result<(), BoxError> {
        let meta = meta_of(frame)?;
        let len = frame.len();
        frame.set_len(len + TAG_LEN).map_err(ChunkError::from)?;
        let (body, tag_room) = frame.bytes_mut()[META_LEN..].split_at_mut(len - META_LEN);
        let tag = self.0.seal(meta.seq, &meta.id, body);
        tag_room.copy_from_slice(&tag);
        Ok(())
    }
}

/// [`Seal`]'s inverse: checks the tag and decrypts in place. A chunk whose tag fails
/// is a [`ChunkError::Auth`] naming it, and its bytes stay sealed.
pub struct Open(Aead);

impl Open {
    /// Opens what [`Seal::new`] with the same arguments sealed.
    pub fn new(cipher: Cipher, key: &Key, salt: [u8; SALT_LEN]) -> Self {
        Self(Aead::new(cipher, key, salt))
    }
}

impl Stage for Open {
    fn process(&mut self, frame: &mut Frame<'_>) -> Result<(), BoxError> {
        let meta = meta_of(frame)?;
        let len = frame.len();
        let body_len = len.checked_sub(META_LEN + TAG_LEN).ok_or(ChunkError::Truncated { len })?;
        let (body, tag) = frame.bytes_mut()[META_LEN..].split_at_mut(body_len);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().expect("TAG_LEN bytes");
        if !self.0.open(meta.seq, &meta.id, body, &tag) {
            return Err(ChunkError::Auth { seq: meta.seq, id: meta.id_hex() }.into());
        }
        frame.set_len(len - TAG_LEN).map_err(ChunkError::from)?;
        Ok(())
    }
}

impl Registered for Seal {
    const NAME: &'static str = SEAL;
    type Params = SealParams;
    fn from_params(p: SealParams) -> Result<Self, BoxError> {
        Ok(Seal::new(p.cipher, &p.key, p.salt))
    }
}

impl Registered for Open {
    const NAME: &'static str = OPEN;
    type Params = SealParams;
    fn from_params(p: SealParams) -> Result<Self, BoxError> {
        Ok(Open::new(p.cipher, &p.key, p.salt))
    }
}

register!(Seal, Open);
