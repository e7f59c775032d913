//! Talking to the engine over REST: logging in like a real client, creating conversations.

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::scenario::Scenario;

/// A logged-in HTTP client for one run.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    /// Access token, when the engine requires one.
    pub token: Option<String>,
    pub model: Option<String>,
}

impl Client {
    /// Logs in with `--email/--password` (or the `SWITCHYARD_BOOTSTRAP_*` variables), or uses
    /// `--token`; with neither, runs unauthenticated (an engine without auth configured).
    pub async fn connect(scenario: &Scenario) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()
            .context("failed to build the HTTP client")?;
        let email =
            scenario.email.clone().or_else(|| std::env::var("SWITCHYARD_BOOTSTRAP_EMAIL").ok());
        let password = scenario
            .password
            .clone()
            .or_else(|| std::env::var("SWITCHYARD_BOOTSTRAP_PASSWORD").ok());
        let token = match (&scenario.token, email, password) {
            (Some(token), _, _) => Some(token.clone()),
            (None, Some(email), Some(password)) => {
                Some(login(&http, &scenario.target, &email, &password).await?)
            }
            _ => None,
        };
        Ok(Client { http, base: scenario.target.clone(), token, model: scenario.model.clone() })
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.post(format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Creates a conversation and returns its id.
    pub async fn create_conversation(&self) -> anyhow::Result<String> {
        let body = match &self.model {
            Some(model) => json!({ "model": model }),
            None => json!({}),
        };
        let response = self.post("/api/v1/conversations").json(&body).send().await?;
        let status = response.status();
        let json: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("creating a conversation failed with {status}: {json}");
        }
        json["id"].as_str().map(str::to_owned).context("no conversation id in the response")
    }

    /// `ws://…/ws/{id}` for the target.
    pub fn ws_url(&self, conversation_id: &str) -> String {
        let base = self.base.replacen("https://", "wss://", 1).replacen("http://", "ws://", 1);
        format!("{base}/ws/{conversation_id}")
    }
}

async fn login(
    http: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<String> {
    let response = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .with_context(|| format!("failed to reach {base}"))?;
    let status = response.status();
    let json: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("login failed with {status}: {}", json["error"]["message"]);
    }
    ["access_token", "token"]
        .iter()
        .find_map(|k| json[*k].as_str())
        .map(str::to_owned)
        .context("the login response carries no access token")
}

/// A user message of about `size` bytes, different per client and turn so caches miss.
pub fn message(client: usize, turn: u64, size: usize) -> String {
    let mut text = format!("Load test client {client} turn {turn}: ");
    const FILLER: &str = "tell me something about trains and timetables ";
    while text.len() < size {
        text.push_str(FILLER);
    }
    text.truncate(size.max(text.find(':').map_or(1, |i| i + 1)));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_asked_size_and_differ() {
        let a = message(1, 1, 200);
        assert_eq!(a.len(), 200);
        assert_ne!(a, message(2, 1, 200));
        assert_ne!(a, message(1, 2, 200));
    }
}
