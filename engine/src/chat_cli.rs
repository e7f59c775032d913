//! `switchyard chat`: send one message to a running engine and stream the reply, the way a
//! newcomer checks that everything works (REST + Server-Sent Events, no extra tools).

use std::io::Write;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::cli::ChatArgs;

pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let base = args.url.trim_end_matches('/');
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
