//! Argon2id that reuses one memory area per thread instead of allocating 19 MiB per hash.
//!
//! Why: `Argon2::hash_password` allocates its memory blocks anew for every hash. With glibc's
//! allocator those 19 MiB areas are not handed back, nor reliably reused: a single thread that
//! hashes in a loop grows by 19 MiB per hash up to about 220 MiB, and every arena (one per
//! thread that ever hashed) can do the same. Here each hashing thread keeps one area for good
//! (the hashing pool has one thread per core, see `accounts::Passwords`), so the hashing memory
//! of the process is one area per core, whatever the load.
//!
//! [`Hasher`] is argon2's own `PasswordHasher`, with `hash_password_into_with_memory` in place
//! of `hash_password_into`; verification is password-hash's generic verifier on top of it (it
//! recomputes with the stored parameters and salt and compares in constant time). The hashes
//! are the same PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$…`) as before.

use std::cell::RefCell;

use argon2::password_hash::phc::{Output, ParamsString, Salt};
use argon2::password_hash::{self, CustomizedPasswordHasher, PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};

/// Argon2 with this thread's memory blocks; default parameters (argon2id, 19 MiB, t=2, p=1).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Hasher;

thread_local! {
    /// This thread's memory blocks, grown to the largest cost seen and then kept.
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Largest memory cost accepted from a stored hash, in KiB (64 MiB): the app only stores hashes
/// of the default cost, so anything above is not one of them.
const MAX_STORED_COST_KIB: usize = 64 * 1024;

impl Hasher {
    /// Hashes `password` with a fresh random salt, to a PHC string.
    pub(crate) fn hash(password: &[u8]) -> password_hash::Result<String> {
        Ok(PasswordHasher::hash_password(&Self, password)?.to_string())
    }

    /// Whether `password` matches the PHC string `stored`.
    pub(crate) fn verify(password: &[u8], stored: &str) -> bool {
        PasswordHash::new(stored)
            .is_ok_and(|hash| PasswordVerifier::verify_password(&Self, password, &hash).is_ok())
    }
}

impl CustomizedPasswordHasher<PasswordHash> for Hasher {
    type Params = Params;

    fn hash_password_customized(
        &self,
        password: &[u8],
        salt: &[u8],
        alg_id: Option<&str>,
        version: Option<u32>,
        params: Params,
    ) -> password_hash::Result<PasswordHash> {
        let algorithm = alg_id
            .map(Algorithm::try_from)
            .transpose()?
            .unwrap_or_default();
        let version = version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        let blocks = params.block_count();
        if blocks > MAX_STORED_COST_KIB {
            return Err(password_hash::Error::ParamsInvalid);
        }
        let salt = Salt::new(salt)?;
        let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        let mut buffer = [0u8; Output::MAX_LENGTH];
        let out = buffer
            .get_mut(..output_len)
            .ok_or(password_hash::Error::OutputSize)?;
        let argon2 = Argon2::new(algorithm, version, params.clone());
        BLOCKS.with_borrow_mut(|memory| {
            if memory.len() < blocks {
                memory.resize(blocks, Block::new());
            }
            argon2.hash_password_into_with_memory(password, &salt, &mut *out, &mut memory[..blocks])
        })?;
        Ok(PasswordHash {
            algorithm: algorithm.ident(),
            version: Some(version.into()),
            params: ParamsString::try_from(&params)?,
            salt: Some(salt),
            hash: Some(Output::new(out)?),
        })
    }
}

impl PasswordHasher<PasswordHash> for Hasher {
    fn hash_password_with_salt(
        &self,
        password: &[u8],
        salt: &[u8],
    ) -> password_hash::Result<PasswordHash> {
        self.hash_password_customized(password, salt, None, None, Params::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2s_own_and_verify_both_ways() {
        let ours = Hasher::hash(b"correct horse").unwrap();
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        // The stock hasher accepts ours, and ours accepts the stock hasher's.
        let stock = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &stock)
                .is_ok()
        );
        let theirs = Argon2::default()
            .hash_password(b"correct horse")
            .unwrap()
            .to_string();
        assert!(Hasher::verify(b"correct horse", &theirs));
        assert!(Hasher::verify(b"correct horse", &ours));
        assert!(!Hasher::verify(b"wrong horse", &ours));
        assert!(!Hasher::verify(b"correct horse", "not a hash"));
    }
}
