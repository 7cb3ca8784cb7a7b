//! The client's address: the socket peer, or `X-Forwarded-For` when the peer is a trusted proxy.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// Resolves the client address of a request.
///
/// When `peer` is inside one of `trusted_proxies`, `X-Forwarded-For` is read from the right: each
/// hop that is itself a trusted proxy is skipped, and the first one that is not is the client.
/// An unparsable entry stops the walk, so a client cannot inject an address past the last proxy
/// that vouched for the chain. An untrusted peer's header is ignored entirely.
///
/// ```
/// # use std::net::IpAddr;
/// # use http::HeaderMap;
/// use session_layer::resolve_client_ip;
///
/// let trusted = ["10.0.0.0/8".parse().unwrap()];
/// let mut headers = HeaderMap::new();
/// headers.insert("x-forwarded-for", "198.51.100.1, 203.0.113.7".parse().unwrap());
/// let peer: IpAddr = "10.0.0.2".parse().unwrap();
/// assert_eq!(
///     resolve_client_ip(&headers, Some(peer), &trusted),
///     Some("203.0.113.7".parse().unwrap())
/// );
/// ```
#[must_use]
pub fn resolve_client_ip(
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    trusted_proxies: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer.map(canonical)?;
    let is_trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    // Several headers are one comma-separated list, in order; walk it from the right, entry by
    // entry as bytes, so a stray non-ASCII byte to the left of the proxies' own entries (which
    // a client can put there) spoils nothing on their right.
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|value| value.as_bytes().rsplit(|&b| b == b','))
        .map(<[u8]>::trim_ascii);
    for hop in hops {
        let parsed = std::str::from_utf8(hop)
            .ok()
            .and_then(|hop| hop.parse::<IpAddr>().ok());
        match parsed.map(canonical).ok_or(()) {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Some(client)
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, as a dual-stack socket reports v4 peers) as plain IPv4.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_non_ascii_byte_left_of_the_proxies_spoils_nothing() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"1.2.3.4, \xff\xfe, 203.0.113.7, 10.0.0.9").unwrap(),
        );
        assert_eq!(
            resolve_client_ip(&h, Some(ip("10.0.0.2")), &trusted),
            Some(ip("203.0.113.7"))
        );
        // Garbage as the entry the last proxy vouched for: the walk stops at that proxy.
        h.insert(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"203.0.113.7, \xff").unwrap(),
        );
        assert_eq!(
            resolve_client_ip(&h, Some(ip("10.0.0.2")), &trusted),
            Some(ip("10.0.0.2"))
        );
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn untrusted_peer_header_is_ignored() {
        let h = headers(&["203.0.113.9"]);
        assert_eq!(
            resolve_client_ip(&h, Some(ip("198.51.100.4")), &[]),
            Some(ip("198.51.100.4"))
        );
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&["1.1.1.1, 203.0.113.7", "10.0.0.5"]);
        assert_eq!(
            resolve_client_ip(&h, Some(ip("10.0.0.1")), &trusted),
            Some(ip("203.0.113.7"))
        );
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_vouched_hop() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&["203.0.113.7, not-an-ip, 10.0.0.9"]);
        assert_eq!(
            resolve_client_ip(&h, Some(ip("10.0.0.1")), &trusted),
            Some(ip("10.0.0.9"))
        );
    }

    #[test]
    fn mapped_ipv4_is_canonicalised() {
        assert_eq!(
            resolve_client_ip(&HeaderMap::new(), Some(ip("::ffff:192.0.2.1")), &[]),
            Some(ip("192.0.2.1"))
        );
    }
}
