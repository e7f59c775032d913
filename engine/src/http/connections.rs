//! Per-client connection caps: one client address holds at most
//! `limits.max_connections_per_ip` connections at once, so a flood from one address cannot
//! take the sockets, file descriptors and memory every other client needs.
//!
//! How the pieces connect:
//!
//! - [`ConnectionLimiter::on_connect`] runs as actix accepts each TCP connection and leaves a
//!   [`ConnectionSlot`] in the connection's data; the slot holds the address's count for as
//!   long as the connection lives (actix drops connection data with the connection).
//! - The [`admit`] middleware reads the slot on every request. Past the cap, requests get
//!   429 `too_many_connections` with `Connection: close` (a WebSocket handshake is refused the
//!   same way, before the upgrade). Refused connections are counted too, and once an address
//!   holds as many refused connections as the cap, further ones are shut down as they are
//!   accepted, without an answer: a flood costs at most twice the cap per address.
//! - Behind a reverse proxy every connection comes from the proxy, so connections from
//!   `limits.trusted_proxies` are not capped by their own address. Instead each request on
//!   them counts against the client address in `X-Forwarded-For` (the rightmost entry that is
//!   not itself a trusted proxy) for as long as its response lasts — a WebSocket session or
//!   an SSE stream included. Refusals there keep the proxy's connection open, since other
//!   clients share it. `X-Forwarded-For` from anyone else is ignored: it is trivially forged.
//!   [`client_ip`] gives other per-address checks (the login lockout) the same answer.
//!
//! IPv4-mapped IPv6 addresses count as IPv4; other IPv6 addresses count per /64, the block
//! one subscriber typically holds.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Extensions, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::HeaderMap;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, ResponseError};
use serde::Deserialize;

use crate::config::LimitsConfig;
use crate::error::ApiError;

/// An address or a CIDR range (`10.0.0.0/8`, `fd00::/8`, `192.0.2.7`), as
/// `limits.trusted_proxies` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `ip` lies in the range (IPv4-mapped IPv6 addresses match IPv4 ranges).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(u128::from(u32::from(ip)), self.prefix, 32)
                    == mask(u128::from(u32::from(net)), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask(u128::from(ip), self.prefix, 128) == mask(u128::from(net), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `bits`-wide address.
fn mask(value: u128, prefix: u8, bits: u8) -> u128 {
    let host_bits = u32::from(bits.saturating_sub(prefix));
    if host_bits >= 128 { 0 } else { value >> host_bits }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || format!("`{text}` is not an IP address or a CIDR range like 10.0.0.0/8");
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let network: IpAddr = addr.parse().map_err(|_| invalid())?;
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => {
                prefix.parse::<u8>().ok().filter(|p| *p <= width).ok_or_else(invalid)?
            }
            None => width,
        };
        Ok(IpRange { network, prefix })
    }
}

impl TryFrom<String> for IpRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let top = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(top))
        }
        v4 => v4,
    }
}

#[derive(Debug, Default)]
struct Counts {
    admitted: usize,
    refused: usize,
}

/// Counts the connections of every client address, shared by all workers.
#[derive(Debug)]
pub struct ConnectionLimiter {
    cap: usize,
    trusted: Vec<IpRange>,
    counts: Mutex<HashMap<IpAddr, Counts>>,
}

/// What [`ConnectionLimiter::on_connect`] decided about a connection, kept in its data.
pub enum ConnectionSlot {
    /// A client's connection within the cap. Shared so that a WebSocket session, which
    /// outlives the HTTP dispatcher that held the connection's data, can keep it counted
    /// ([`connection_hold`]).
    Admitted(Arc<Held>),
    /// Over the cap: every request gets 429 and the connection closes.
    Refused(Held),
    /// A trusted proxy's connection: requests count against their forwarded client.
    Proxy(Arc<ConnectionLimiter>),
}

/// One counted connection (or proxied request); released when dropped.
pub struct Held {
    limiter: Arc<ConnectionLimiter>,
    key: IpAddr,
    refused: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut counts = self.limiter.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = counts.get_mut(&self.key) {
            if self.refused {
                entry.refused = entry.refused.saturating_sub(1);
            } else {
                entry.admitted = entry.admitted.saturating_sub(1);
            }
            if entry.admitted == 0 && entry.refused == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl ConnectionLimiter {
    pub fn new(limits: &LimitsConfig) -> Arc<Self> {
        Arc::new(Self {
            cap: limits.max_connections_per_ip,
            trusted: limits.trusted_proxies.clone(),
            counts: Mutex::new(HashMap::new()),
        })
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|range| range.contains(ip))
    }

    /// Counts a connection from `ip`: admitted within the cap, refused (answered 429) for as
    /// many again, `None` beyond that.
    fn acquire(self: &Arc<Self>, ip: IpAddr, allow_refused: bool) -> Option<Held> {
        let key = client_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = counts.entry(key).or_default();
        let refused = if entry.admitted < self.cap {
            entry.admitted += 1;
            false
        } else if allow_refused && entry.refused < self.cap {
            entry.refused += 1;
            true
        } else {
            if entry.admitted == 0 && entry.refused == 0 {
                counts.remove(&key);
            }
            return None;
        };
        Some(Held { limiter: self.clone(), key, refused })
    }

    /// Called by actix for every accepted TCP connection.
    pub fn on_connect(self: &Arc<Self>, tcp: &actix_rt::net::TcpStream, data: &mut Extensions) {
        let Ok(peer) = tcp.peer_addr() else { return };
        // Marked even with no cap: the login lockout needs to know whom a proxy forwards.
        if self.trusts(peer.ip()) {
            data.insert(ConnectionSlot::Proxy(self.clone()));
            return;
        }
        if self.cap == 0 {
            return;
        }
        match self.acquire(peer.ip(), true) {
            Some(held) if held.refused => {
                data.insert(ConnectionSlot::Refused(held));
            }
            Some(held) => {
                data.insert(ConnectionSlot::Admitted(Arc::new(held)));
            }
            None => {
                // Far past the cap: not worth an answer. Shutting the socket down makes actix
                // read end-of-stream and drop the connection at once.
                let _ = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// The client a trusted proxy forwards: the rightmost `X-Forwarded-For` entry that is not
    /// itself a trusted proxy. `None` when the header is missing or malformed.
    fn forwarded_client(&self, headers: &HeaderMap) -> Option<IpAddr> {
        let mut entries: Vec<&str> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            entries.extend(value.to_str().ok()?.split(','));
        }
        for entry in entries.iter().rev() {
            let ip = parse_forwarded(entry.trim())?;
            if !self.trusts(ip) {
                return Some(ip);
            }
        }
        None
    }
}

/// Keeps the request's connection counted against its address for as long as the returned
/// value lives (`None` where nothing is counted, or the count is the response's: see
/// [`admit`]).
pub fn connection_hold(req: &HttpRequest) -> Option<Arc<Held>> {
    match req.conn_data::<ConnectionSlot>() {
        Some(ConnectionSlot::Admitted(held)) => Some(held.clone()),
        _ => None,
    }
}

/// The address a request comes from: the forwarded client on a trusted proxy's connection,
/// else the peer (per-address limits such as the login lockout key on it, so a proxy in
/// front of the engine does not make every client one address).
pub fn client_ip(req: &HttpRequest) -> Option<IpAddr> {
    let forwarded = match req.conn_data::<ConnectionSlot>() {
        Some(ConnectionSlot::Proxy(limiter)) => limiter.forwarded_client(req.headers()),
        _ => None,
    };
    forwarded.or_else(|| req.peer_addr().map(|a| a.ip()))
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    entry.parse::<std::net::SocketAddr>().ok().map(|addr| addr.ip())
}

fn too_many_connections() -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_connections",
        "too many connections from your address; close some and retry",
    )
}

/// Wrap the app with `actix_web::middleware::from_fn(engine::http::connections::admit)`:
/// refuses requests on connections over their address's cap (see the module docs).
pub async fn admit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody + 'static, BoxBody>>, actix_web::Error> {
    let forwarded = match req.conn_data::<ConnectionSlot>() {
        None | Some(ConnectionSlot::Admitted(_)) => None,
        Some(ConnectionSlot::Refused(_)) => {
            let mut response = too_many_connections().error_response();
            response.head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
            return Ok(req.into_response(response).map_into_right_body());
        }
        // Proxies are marked even with no cap (for `client_ip`); then there is nothing to count.
        Some(ConnectionSlot::Proxy(limiter)) if limiter.cap == 0 => None,
        Some(ConnectionSlot::Proxy(limiter)) => match limiter.forwarded_client(req.headers()) {
            None => None,
            Some(client) => match limiter.acquire(client, false) {
                Some(held) => Some(held),
                None => {
                    let response = too_many_connections().error_response();
                    return Ok(req.into_response(response).map_into_right_body());
                }
            },
        },
    };
    let response = next.call(req).await?;
    Ok(match forwarded {
        None => response.map_into_left_body(),
        // The count lasts as long as the response body: a stream or a WebSocket session.
        Some(held) => response
            .map_body(|_, body| BoxBody::new(Holding { body: BoxBody::new(body), _held: held }))
            .map_into_right_body(),
    })
}

/// A response body that keeps a proxied client's count until it is dropped.
struct Holding {
    body: BoxBody,
    _held: Held,
}

impl MessageBody for Holding {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(cap: usize, trusted: &[&str]) -> Arc<ConnectionLimiter> {
        let limits = LimitsConfig {
            max_connections_per_ip: cap,
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            ..LimitsConfig::default()
        };
        ConnectionLimiter::new(&limits)
    }

    #[test]
    fn ranges_parse_and_match() {
        let range: IpRange = "10.1.0.0/16".parse().unwrap();
        assert!(range.contains("10.1.200.3".parse().unwrap()));
        assert!(range.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!range.contains("10.2.0.1".parse().unwrap()));
        assert!(!range.contains("::1".parse().unwrap()));
        let single: IpRange = "192.0.2.7".parse().unwrap();
        assert!(single.contains("192.0.2.7".parse().unwrap()));
        assert!(!single.contains("192.0.2.8".parse().unwrap()));
        let v6: IpRange = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12:3456::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        let everything: IpRange = "0.0.0.0/0".parse().unwrap();
        assert!(everything.contains("203.0.113.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0/8", "::/129", ""] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_cap_admits_then_refuses_then_turns_away_and_releases() {
        let limiter = limiter(2, &[]);
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let a = limiter.acquire(ip, true).unwrap();
        let b = limiter.acquire(ip, true).unwrap();
        assert!(!a.refused && !b.refused);
        let c = limiter.acquire(ip, true).unwrap();
        let d = limiter.acquire(ip, true).unwrap();
        assert!(c.refused && d.refused);
        assert!(limiter.acquire(ip, true).is_none(), "past twice the cap: turned away");
        // Other addresses are unaffected.
        assert!(!limiter.acquire("203.0.113.10".parse().unwrap(), true).unwrap().refused);
        drop(a);
        let e = limiter.acquire(ip, true).unwrap();
        assert!(!e.refused, "a released slot is reused");
        drop((b, c, d, e));
        assert!(limiter.counts.lock().unwrap().is_empty(), "no entry outlives its connections");
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let limiter = limiter(1, &[]);
        let _a = limiter.acquire("2001:db8:1:2::1".parse().unwrap(), false).unwrap();
        assert!(limiter.acquire("2001:db8:1:2::ffff".parse().unwrap(), false).is_none());
        assert!(limiter.acquire("2001:db8:1:3::1".parse().unwrap(), false).is_some());
        let _b = limiter.acquire("198.51.100.1".parse().unwrap(), false).unwrap();
        assert!(limiter.acquire("::ffff:198.51.100.1".parse().unwrap(), false).is_none());
    }

    #[test]
    fn the_forwarded_client_is_the_rightmost_untrusted_entry() {
        let limiter = limiter(4, &["10.0.0.0/8"]);
        let mut headers = HeaderMap::new();
        let mut set = |value: &'static str| {
            headers.insert(
                actix_web::http::header::HeaderName::from_static("x-forwarded-for"),
                actix_web::http::header::HeaderValue::from_static(value),
            );
            limiter.forwarded_client(&headers)
        };
        // A client cannot pick its address by prepending entries: the proxy appends the real one.
        assert_eq!(set("1.1.1.1, 198.51.100.4"), Some("198.51.100.4".parse().unwrap()));
        assert_eq!(set("198.51.100.4, 10.0.0.3"), Some("198.51.100.4".parse().unwrap()));
        assert_eq!(set("[2001:db8::1]:443"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(set("10.0.0.2"), None);
        assert_eq!(set("garbage"), None);
    }
}
