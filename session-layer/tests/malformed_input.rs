//! Random and mutated credentials through the layer: every one is answered 200 or 401, never a
//! panic or a 5xx. (A stable-toolchain stand-in for fuzzing the token, cookie and header parsers.)

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{HeaderValue, Request, StatusCode};
use session_layer::{
    CookieConfig, CurrentSession, MemoryStore, NewSession, SessionConfig, SessionLayer,
    SessionManager, SessionToken, TokenHash,
};
use tower::ServiceExt;
use uuid::Uuid;

/// xorshift64*: deterministic, so a failure reproduces from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=;,\" \t.%\x7f\x80\xff";

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(4) {
            0 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] = ALPHABET[rng.below(ALPHABET.len())];
            }
            1 => {
                let i = rng.below(bytes.len() + 1);
                bytes.insert(i, ALPHABET[rng.below(ALPHABET.len())]);
            }
            2 if !bytes.is_empty() => {
                bytes.remove(rng.below(bytes.len()));
            }
            _ => bytes.truncate(rng.below(bytes.len() + 1)),
        }
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mutated_credentials_never_crash_or_5xx() {
    let config = SessionConfig::builder()
        .cookie(CookieConfig::insecure())
        .build()
        .unwrap();
    let manager = SessionManager::new(MemoryStore::new(), config).unwrap();
    let (token, _) = manager
        .create(NewSession::new(Uuid::now_v7()))
        .await
        .unwrap()
        .into_parts();
    let valid = token.expose();
    let app = Router::new()
        .route("/", get(|_: CurrentSession| async { "ok" }))
        .layer(SessionLayer::new(manager));

    let seeds: Vec<Vec<u8>> = vec![
        format!("Bearer {valid}").into_bytes(),
        format!("session={valid}").into_bytes(),
        format!("a=b; session=\"{valid}\"; c").into_bytes(),
        b"bearer ".to_vec(),
        Vec::new(),
    ];
    let seed = 0x5e55_1011_u64;
    let mut rng = Rng(seed);
    let mut accepted = 0;
    for round in 0..20_000 {
        let pick = rng.below(seeds.len());
        let raw = mutate(&mut rng, &seeds[pick]);
        // Bytes that cannot form a header value never reach a service.
        let Ok(value) = HeaderValue::from_bytes(&raw) else {
            continue;
        };
        let name = if rng.below(2) == 0 {
            "authorization"
        } else {
            "cookie"
        };
        let request = Request::get("/")
            .header(name, value)
            .body(Body::empty())
            .unwrap();
        let status = app.clone().oneshot(request).await.unwrap().status();
        assert!(
            status == StatusCode::OK || status == StatusCode::UNAUTHORIZED,
            "seed {seed:#x} round {round}: {status} for {raw:?}"
        );
        accepted += usize::from(status == StatusCode::OK);
        // Direct parser calls on the same bytes.
        if let Ok(text) = std::str::from_utf8(&raw) {
            let _ = SessionToken::parse(text);
            let _ = TokenHash::from_encoded(text);
            let _ = TokenHash::from_hex(text);
        }
    }
    assert!(
        accepted > 0,
        "no mutation left a valid credential; the test lost its seeds"
    );
}
