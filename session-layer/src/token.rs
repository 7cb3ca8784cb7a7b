//! Session tokens and their SHA-256 hashes.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::error::TokenError;

/// Number of random bytes in a token (256 bits).
const TOKEN_BYTES: usize = 32;

/// Length of a token in unpadded base64url: `ceil(32 * 4 / 3)`.
pub const TOKEN_LEN: usize = 43;

/// A session token: 32 bytes from the operating system's CSPRNG.
///
/// The token is the bearer credential, so it is never printed: `Debug` shows `SessionToken(REDACTED)`
/// and there is no `Display`. Use [`SessionToken::expose`] to get the encoded form exactly where it
/// must leave the process (a `Set-Cookie` header, a JSON login response).
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken([u8; TOKEN_BYTES]);

impl SessionToken {
    /// Draws a new token from the operating system's CSPRNG.
    ///
    /// # Errors
    ///
    /// [`TokenError::Entropy`] when the OS random source fails (practically never on Linux).
    pub fn generate() -> Result<Self, TokenError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(|_| TokenError::Entropy)?;
        Ok(Self(bytes))
    }

    /// Parses the 43-character unpadded base64url form.
    ///
    /// Anything else (wrong length, padding, characters outside the base64url alphabet,
    /// non-canonical trailing bits) is rejected before any lookup happens.
    ///
    /// # Errors
    ///
    /// [`TokenError::Malformed`] for any input that is not exactly a well-formed token.
    pub fn parse(encoded: &str) -> Result<Self, TokenError> {
        decode(encoded.as_bytes()).map(Self)
    }

    /// The encoded token (43 characters of unpadded base64url), for sending to the client.
    #[must_use]
    pub fn expose(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The SHA-256 hash under which the session is stored.
    #[must_use]
    pub fn hash(&self) -> TokenHash {
        TokenHash::of_bytes(&self.0)
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(REDACTED)")
    }
}

/// Decodes a token without allocating; used on the request path.
pub(crate) fn decode(encoded: &[u8]) -> Result<[u8; TOKEN_BYTES], TokenError> {
    if encoded.len() != TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let mut bytes = [0u8; TOKEN_BYTES];
    // The engine rejects padding, foreign characters and non-zero trailing bits, so each token
    // has exactly one accepted spelling.
    match URL_SAFE_NO_PAD.decode_slice(encoded, &mut bytes) {
        Ok(TOKEN_BYTES) => Ok(bytes),
        _ => Err(TokenError::Malformed),
    }
}

/// SHA-256 of a session token: the only form in which a token is stored or cached.
///
/// A hash is still a lookup key for a live session, so `Debug` redacts it as well.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hashes the raw token bytes.
    pub(crate) fn of_bytes(token: &[u8; TOKEN_BYTES]) -> Self {
        Self(Sha256::digest(token).into())
    }

    /// Hashes an encoded token, rejecting malformed input first.
    ///
    /// # Errors
    ///
    /// [`TokenError::Malformed`] when `encoded` is not a well-formed token.
    pub fn from_encoded(encoded: &str) -> Result<Self, TokenError> {
        decode(encoded.as_bytes()).map(|bytes| Self::of_bytes(&bytes))
    }

    /// Rebuilds a hash read back from a store.
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 raw bytes, as a store keeps them.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, for stores and notification payloads (never for logs).
    #[must_use]
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for byte in self.0 {
            out.push(char::from(DIGITS[usize::from(byte >> 4)]));
            out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
        }
        out
    }

    /// Parses 64 hex digits (either case).
    #[must_use]
    pub fn from_hex(hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
            let high = char::from(pair[0]).to_digit(16)?;
            let low = char::from(pair[1]).to_digit(16)?;
            // Each digit is < 16, so the combination fits a byte.
            *byte = u8::try_from(high << 4 | low).ok()?;
        }
        Some(Self(bytes))
    }
}

impl TryFrom<&[u8]> for TokenHash {
    type Error = TokenError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| TokenError::Malformed)
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(REDACTED)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_token_round_trips_through_its_encoding() {
        let token = SessionToken::generate().unwrap();
        let encoded = token.expose();
        assert_eq!(encoded.len(), TOKEN_LEN);
        assert!(
            encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let parsed = SessionToken::parse(&encoded).unwrap();
        assert_eq!(parsed, token);
        assert_eq!(parsed.hash(), token.hash());
        assert_eq!(TokenHash::from_encoded(&encoded).unwrap(), token.hash());
    }

    #[test]
    fn two_generated_tokens_differ() {
        assert_ne!(
            SessionToken::generate().unwrap(),
            SessionToken::generate().unwrap()
        );
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let good = SessionToken::generate().unwrap().expose();
        let cases = [
            String::new(),
            good[..42].to_owned(),
            format!("{good}A"),
            format!("{}=", &good[..42]),
            format!("{}+", &good[..42]),
            format!("{}/", &good[..42]),
            format!("{}é", &good[..41]),
            " ".repeat(43),
            format!("{} ", &good[..42]),
        ];
        for case in cases {
            assert_eq!(
                SessionToken::parse(&case),
                Err(TokenError::Malformed),
                "{case:?}"
            );
        }
    }

    #[test]
    fn non_canonical_trailing_bits_are_rejected() {
        // 43 chars carry 258 bits; the last char's low 2 bits must be zero.
        let token = "A".repeat(42) + "B";
        assert_eq!(SessionToken::parse(&token), Err(TokenError::Malformed));
        let canonical = "A".repeat(42) + "E";
        assert!(SessionToken::parse(&canonical).is_ok());
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let token = SessionToken::generate().unwrap();
        let encoded = token.expose();
        let debug = format!("{token:?} {:?}", token.hash());
        assert!(!debug.contains(&encoded));
        assert!(!debug.contains(&token.hash().to_hex()));
        assert!(debug.contains("REDACTED"));
    }

    #[test]
    fn hash_hex_round_trips() {
        let hash = SessionToken::generate().unwrap().hash();
        let hex = hash.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(TokenHash::from_hex(&hex), Some(hash));
        assert_eq!(TokenHash::from_hex(&hex.to_uppercase()), Some(hash));
        assert_eq!(TokenHash::from_hex(&hex[..63]), None);
        assert_eq!(TokenHash::from_hex(&format!("{}g", &hex[..63])), None);
    }

    #[test]
    fn hash_matches_sha256_of_raw_bytes() {
        // SHA-256 of 32 zero bytes.
        let token = SessionToken::parse(&"A".repeat(43)).unwrap();
        assert_eq!(
            token.hash().to_hex(),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
    }
}
