//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL does it: passwords are stored as
//! verifiers `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (the format of
//! `pg_authid.rolpassword`), from which a client's proof can be checked but no login can be
//! made. The server side of one exchange: [`Verifier::first`] answers the client-first
//! message, [`Challenge::finish`] checks the client-final message.
//!
//! Channel binding (`SCRAM-SHA-256-PLUS`) is not offered: a client over TLS sends the
//! `y,,` header, which is accepted; `p=` (binding the server did not offer) is refused.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::{digest, hmac};
use std::fmt;

/// The SASL mechanism name.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// Iterations of new verifiers (PostgreSQL's default, RFC 7677's minimum).
pub const ITERATIONS: u32 = 4096;

/// A stored password verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

/// Never prints the keys.
impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier(SCRAM-SHA-256, redacted)")
    }
}

/// Why an exchange failed: a malformed message, or a wrong password.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("wrong password")]
    WrongPassword,
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, data).as_ref().to_vec()
}

/// Equal without an early exit on the first differing byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Verifier {
    /// The verifier of `password` with a new random salt.
    pub fn new(password: &str) -> Self {
        Self::with_salt(password, &rand::random::<[u8; 16]>(), ITERATIONS)
    }

    /// The verifier of `password` with this salt and iteration count.
    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> Self {
        // SaltedPassword := Hi(Normalize(password), salt, i), SASLprep as PostgreSQL does
        // (the password itself when it cannot be prepared)
        let salted = datafusion_postgres::pgwire::api::auth::sasl::scram::gen_salted_password(
            password,
            salt,
            iterations as usize,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// Parse `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = "expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> \
                        (print one with `tracecube passwd`)";
        let rest = text
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or_else(|| format!("not a SCRAM-SHA-256 verifier: {expected}"))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or_else(|| format!("no keys: {expected}"))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or_else(|| format!("no salt: {expected}"))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or_else(|| format!("no server key: {expected}"))?;
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|i| *i > 0)
            .ok_or_else(|| format!("bad iteration count {iterations:?}: {expected}"))?;
        let decode = |what: &str, value: &str| {
            BASE64
                .decode(value)
                .map_err(|e| format!("{what} is not base64 ({e}): {expected}"))
        };
        let verifier = Verifier {
            iterations,
            salt: decode("the salt", salt)?,
            stored_key: decode("StoredKey", stored)?,
            server_key: decode("ServerKey", server)?,
        };
        if verifier.salt.is_empty()
            || verifier.stored_key.len() != 32
            || verifier.server_key.len() != 32
        {
            return Err(format!("keys of the wrong length: {expected}"));
        }
        Ok(verifier)
    }

    /// Answer a client-first message (`n,,n=user,r=nonce`): the server-first message and
    /// what the client-final message must prove.
    pub fn first(&self, client_first: &[u8]) -> Result<(String, Challenge), ScramError> {
        let client_first =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: channel-binding flag, optional authzid, then the bare message
        let (flag, rest) = client_first
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        match flag {
            "n" | "y" => {}
            _ => {
                return Err(ScramError::Malformed(
                    "channel binding is not offered by this server",
                ));
            }
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "an authorization identity is not supported",
            ));
        }
        let gs2_header = &client_first[..flag.len() + authzid.len() + 2];
        let client_nonce = bare
            .split(',')
            .find_map(|attr| attr.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(ScramError::Malformed("no client nonce"))?;
        let nonce = format!(
            "{client_nonce}{}",
            BASE64.encode(rand::random::<[u8; 18]>())
        );
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&self.salt),
            self.iterations
        );
        Ok((
            server_first.clone(),
            Challenge {
                verifier: self.clone(),
                gs2_header: gs2_header.to_string(),
                client_first_bare: bare.to_string(),
                server_first,
                nonce,
            },
        ))
    }
}

impl fmt::Display for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(&self.stored_key),
            BASE64.encode(&self.server_key)
        )
    }
}

/// A server-first message sent, waiting for the client's proof.
#[derive(Debug)]
pub struct Challenge {
    verifier: Verifier,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl Challenge {
    /// Check a client-final message (`c=…,r=…,p=proof`): the server-final message
    /// (`v=ServerSignature`) when the proof is right.
    pub fn finish(&self, client_final: &[u8]) -> Result<String, ScramError> {
        let client_final =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding attribute"))?;
        if BASE64.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Malformed("channel binding mismatch"));
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if nonce != self.nonce {
            return Err(ScramError::Malformed("nonce mismatch"));
        }
        let proof = BASE64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let signature = hmac_sha256(&self.verifier.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err(ScramError::WrongPassword);
        }
        // ClientKey = ClientProof XOR ClientSignature; H(ClientKey) must be StoredKey
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        if !same(&sha256(&client_key), &self.verifier.stored_key) {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", BASE64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::pbkdf2;
    use std::num::NonZeroU32;

    /// The client side of RFC 5802, written from the RFC for the test.
    fn client_final(password: &str, client_first_bare: &str, server_first: &str) -> String {
        let attr = |name: &str| {
            server_first
                .split(',')
                .find_map(|a| a.strip_prefix(name))
                .unwrap()
                .to_string()
        };
        let salt = BASE64.decode(attr("s=")).unwrap();
        let iterations: u32 = attr("i=").parse().unwrap();
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(iterations).unwrap(),
            &salt,
            password.as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = sha256(&client_key);
        let without_proof = format!("c={},r={}", BASE64.encode("n,,"), attr("r="));
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        format!("{without_proof},p={}", BASE64.encode(proof))
    }

    #[test]
    fn the_right_password_passes_and_a_wrong_one_does_not() {
        let verifier = Verifier::new("s3cret é");
        let parsed = Verifier::parse(&verifier.to_string()).unwrap();
        assert_eq!(parsed, verifier);
        for (password, ok) in [("s3cret é", true), ("s3cret e", false), ("", false)] {
            let bare = "n=,r=abcdefgh";
            let (server_first, challenge) = parsed.first(format!("n,,{bare}").as_bytes()).unwrap();
            assert!(server_first.starts_with("r=abcdefgh"));
            let result = challenge.finish(client_final(password, bare, &server_first).as_bytes());
            assert_eq!(result.is_ok(), ok, "{password}");
            if !ok {
                assert_eq!(result.unwrap_err(), ScramError::WrongPassword);
            }
        }
    }

    #[test]
    fn a_replayed_or_altered_final_message_is_refused() {
        let verifier = Verifier::new("pw");
        let bare = "n=,r=nonce1";
        let (server_first, challenge) = verifier.first(format!("n,,{bare}").as_bytes()).unwrap();
        let good = client_final("pw", bare, &server_first);
        // another exchange has another server nonce
        let (_, other) = verifier.first(format!("n,,{bare}").as_bytes()).unwrap();
        assert!(other.finish(good.as_bytes()).is_err());
        // binding flag changed after the fact
        let altered = good.replace(&BASE64.encode("n,,"), &BASE64.encode("y,,"));
        assert!(challenge.finish(altered.as_bytes()).is_err());
        assert!(challenge.finish(b"c=biws").is_err());
        assert!(challenge.finish(good.as_bytes()).is_ok());
    }

    #[test]
    fn verifiers_in_postgresql_form_are_read_and_others_refused() {
        // the verifier of "secret" with salt 1..=16, as the PostgreSQL client library of
        // Rust (postgres-protocol) computes it in its own tests
        let pg = "SCRAM-SHA-256$4096:AQIDBAUGBwgJCgsMDQ4PEA==$8rrDg00OqaiWXJ7p+sCgHEIaBSHY89ZJl3mfIsf32oY=:05L1f+yZbiN8O0AnO40Og85NNRhvzTS57naKRWCcsIA=";
        let verifier = Verifier::parse(pg).unwrap();
        assert_eq!(verifier.to_string(), pg);
        let salt: Vec<u8> = (1..=16).collect();
        assert_eq!(Verifier::with_salt("secret", &salt, 4096), verifier);
        for bad in [
            "hunter2",
            "md5abcdef",
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$0:c2FsdA==$",
        ] {
            assert!(Verifier::parse(bad).is_err(), "{bad}");
        }
        assert!(!format!("{verifier:?}").contains("8rrD"));
    }

    #[test]
    fn channel_binding_and_authzid_are_refused() {
        let verifier = Verifier::new("pw");
        assert!(verifier.first(b"p=tls-server-end-point,,n=,r=x").is_err());
        assert!(verifier.first(b"n,a=admin,n=,r=x").is_err());
        assert!(verifier.first(b"y,,n=,r=x").is_ok());
        assert!(verifier.first(b"n,,n=,r=").is_err());
    }
}
