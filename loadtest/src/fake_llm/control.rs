//! Runtime control of the server's defaults, for chaos drills: `POST /_fake/scenario`.
//!
//! The body uses the `x-fake-llm` header's syntax (`error_status=503; retry_after=1`) and is
//! applied on top of the defaults the server **started** with, replacing any earlier
//! override; an empty body (or `reset`) restores the start-up defaults. `GET /_fake/scenario`
//! shows the override in force. A per-request `x-fake-llm` header still applies on top.
//!
//! This lets a drill switch one long-running fake between healthy, 5xx/429 storms and cut
//! streams without restarting it (which would itself be a different fault: connection refused).

use std::sync::RwLock;

use actix_web::{HttpResponse, web};
use bytes::Bytes;
use serde_json::json;

use super::{Scenario, Shared};

/// The defaults in force: the start-up scenario plus the override posted last.
pub(crate) struct Defaults {
    initial: Scenario,
    current: RwLock<(Scenario, String)>,
}

impl Defaults {
    pub(crate) fn new(initial: Scenario) -> Self {
        Defaults { current: RwLock::new((initial.clone(), String::new())), initial }
    }

    /// The scenario requests get when they send no header.
    pub(crate) fn get(&self) -> Scenario {
        self.current.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// Replaces the override; an empty one (or `reset`) restores the start-up defaults.
    pub(crate) fn set(&self, knobs: &str) -> Result<(), String> {
        let knobs = knobs.trim();
        let knobs = if knobs.eq_ignore_ascii_case("reset") { "" } else { knobs };
        let scenario = Scenario::parse_header(&self.initial, knobs)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (scenario, knobs.to_owned());
        Ok(())
    }

    fn knobs(&self) -> String {
        self.current.read().unwrap_or_else(|e| e.into_inner()).1.clone()
    }
}

pub(crate) async fn set_scenario(shared: web::Data<Shared>, body: Bytes) -> HttpResponse {
    let Ok(text) = std::str::from_utf8(&body) else {
        return bad_request("the body is not UTF-8".into());
    };
    match shared.defaults.set(text) {
        Ok(()) => {
            tracing::info!(knobs = text.trim(), "fake-llm defaults changed");
            HttpResponse::Ok().json(json!({ "scenario": shared.defaults.knobs() }))
        }
        Err(message) => bad_request(message),
    }
}

pub(crate) async fn get_scenario(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "scenario": shared.defaults.knobs() }))
}

fn bad_request(message: String) -> HttpResponse {
    HttpResponse::BadRequest()
        .json(json!({ "error": { "code": "invalid_scenario", "message": message } }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_replaces_the_last_and_reset_restores_the_start() {
        let start = Scenario { tokens: 40, ..Scenario::default() };
        let defaults = Defaults::new(start);
        defaults.set("error_status=503").unwrap();
        assert_eq!(defaults.get().error_status, Some(503));
        defaults.set("break_after=5").unwrap();
        let now = defaults.get();
        assert_eq!((now.error_status, now.break_after, now.tokens), (None, Some(5), 40));
        defaults.set("reset").unwrap();
        assert_eq!((defaults.get().break_after, defaults.get().tokens), (None, 40));
        assert!(defaults.set("fail_rate=2").is_err());
        assert_eq!(defaults.get().tokens, 40, "a refused override changes nothing");
    }
}
