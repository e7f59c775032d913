//! `switchyard chat`: send one message to a running engine and stream the reply, the way a
//! newcomer checks that everything works (REST + Server-Sent Events, no extra tools).
//!
//! It logs in first: with `--email/--password` (or `SWITCHYARD_EMAIL`/`SWITCHYARD_PASSWORD`),
//! else with the demo login the embedded engine printed and saved at its first start
//! (`~/.config/switchyard/credentials.json`, readable only by the user).

use std::io::Write;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::cli::ChatArgs;

pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let base = args.url.trim_end_matches('/');
    let http = login(base, &args).await?;
    let conversation = match args.conversation {
        Some(id) => id,
        None => {
            let body = match &args.model {
                Some(model) => json!({ "model": model }),
                None => json!({}),
            };
            let response = http
                .post(format!("{base}/api/v1/conversations"))
                .json(&body)
                .send()
                .await
                .with_context(|| format!("failed to reach the engine at {base}; is it running?"))?;
            let json = error_for_status(response).await?;
            json["id"].as_str().context("the engine returned no conversation id")?.to_owned()
        }
    };
    let response = http
        .post(format!("{base}/api/v1/conversations/{conversation}/messages"))
        .json(&json!({ "content": args.message.join(" "), "stream": true }))
        .send()
        .await
        .context("failed to send the message")?;
    if !response.status().is_success() {
        error_for_status(response).await?;
        return Ok(());
    }
    let mut events = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut stdout = std::io::stdout();
    while let Some(chunk) = events.next().await {
        buffer.extend_from_slice(&chunk.context("the stream broke")?);
        while let Some(end) = find_frame_end(&buffer) {
            let frame: Vec<u8> = buffer.drain(..end + 2).collect();
            let Some(event) = parse_frame(&frame) else { continue };
            match event["type"].as_str() {
                Some("delta") => {
                    print!("{}", event["text"].as_str().unwrap_or_default());
                    let _ = stdout.flush();
                }
                Some("failover") => {
                    eprint!("\n[failover {} → {}]\n", str_of(&event["from"]), str_of(&event["to"]))
                }
                Some("retract") => eprint!("\n[retracted; answering afresh]\n"),
                Some("done") => {
                    println!();
                    eprintln!(
                        "[model {}, {} output tokens, cache {}; conversation {conversation}]",
                        str_of(&event["model"]),
                        event["usage"]["output_tokens"],
                        str_of(&event["cache"])
                    );
                }
                Some("error") => bail!("{}: {}", str_of(&event["code"]), str_of(&event["message"])),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Logs in and answers a client that sends the access token on every request.
async fn login(base: &str, args: &ChatArgs) -> anyhow::Result<reqwest::Client> {
    let (email, password) = match (&args.email, &args.password) {
        (Some(email), Some(password)) => (email.clone(), password.clone()),
        _ => saved_credentials().context(
            "no login: pass --email and --password (or set SWITCHYARD_EMAIL and SWITCHYARD_PASSWORD)",
        )?,
    };
    let response = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .with_context(|| format!("failed to reach the engine at {base}; is it running?"))?;
    let session = error_for_status(response).await.context("login failed")?;
    let token = session["access_token"].as_str().context("the engine returned no token")?;
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .context("the engine returned an unusable token")?;
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(reqwest::Client::builder().default_headers(headers).build()?)
}

/// The demo login saved by the embedded engine, if any.
fn saved_credentials() -> Option<(String, String)> {
    let path = crate::auth::service::default_credentials_file()?;
    let text = std::fs::read_to_string(path).ok()?;
    let json: Value = serde_json::from_str(&text).ok()?;
    Some((json["email"].as_str()?.to_owned(), json["password"].as_str()?.to_owned()))
}

fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

fn find_frame_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\n\n")
}

fn parse_frame(frame: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(frame).ok()?;
    let data = text.lines().find_map(|l| l.strip_prefix("data: "))?;
    serde_json::from_str(data).ok()
}

async fn error_for_status(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let json: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "the engine answered {status}: {}",
            json["error"]["message"].as_str().unwrap_or("no details")
        );
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_split_on_blank_lines_and_read_from_data() {
        let buffer =
            b"event: delta\ndata: {\"type\":\"delta\",\"text\":\"Hi\"}\n\nevent: done".to_vec();
        let end = find_frame_end(&buffer).unwrap();
        let event = parse_frame(&buffer[..end]).unwrap();
        assert_eq!(event["text"], "Hi");
        assert!(find_frame_end(&buffer[end + 2..]).is_none());
    }
}
