//! `glia logs`: what a function's invocations wrote to stdout and stderr.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use super::client::{Server, check};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The function whose invocations' logs to show.
    #[arg(required_unless_present = "invocation")]
    function: Option<String>,
    /// Show one invocation's log (its `glia-invocation-id`) instead.
    #[arg(long, conflicts_with = "function")]
    invocation: Option<String>,
    /// How many of the latest invocations to show.
    #[arg(long, short = 'n', default_value_t = 20)]
    limit: u32,
    /// Keep watching and print new logs as they arrive (Ctrl-C stops).
    #[arg(long, short = 'f', conflicts_with = "invocation")]
    follow: bool,
    /// How often `--follow` asks for new logs.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    poll_ms: u64,
    #[command(flatten)]
    server: Server,
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let client = args.server.http()?;
    if let Some(id) = &args.invocation {
        let response = client
            .get(args.server.endpoint(&format!("/v1/invocations/{id}/logs")))
            .send()
            .await
            .context("contacting the server")?;
        print_log(&check(response).await?, args.server.json)?;
        return Ok(());
    }
    let function = args.function.as_deref().unwrap_or_default();
    let url = args
        .server
        .endpoint(&format!("/v1/functions/{function}/logs"));
    let mut after: Option<i64> = None;
    loop {
        let mut query = vec![("limit", args.limit.to_string())];
        if let Some(after) = after {
            query.push(("after", after.to_string()));
        }
        let response = client
            .get(&url)
            .query(&query)
            .send()
            .await
            .context("contacting the server")?;
        let page = check(response).await?;
        for log in page
            .get("logs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            print_log(log, args.server.json)?;
        }
        let next = page.get("next").and_then(Value::as_i64).unwrap_or(0);
        if !args.follow {
            return Ok(());
        }
        // Only newer logs from now on; a full page asks again at once.
        let full = page
            .get("logs")
            .and_then(Value::as_array)
            .is_some_and(|l| l.len() >= args.limit as usize);
        after = Some(next);
        if !full {
            tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
        }
    }
}

fn print_log(log: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(log).unwrap_or_default());
        return Ok(());
    }
    let s = |k: &str| log.get(k).and_then(Value::as_str).unwrap_or("");
    let n = |k: &str| log.get(k).and_then(Value::as_i64).unwrap_or(0);
    let truncated = if log.get("truncated").and_then(Value::as_bool) == Some(true) {
        format!(" (truncated: {} bytes written)", n("bytes_written"))
    } else {
        String::new()
    };
    println!(
        "==> {} {}@{} {}{truncated}",
        crate::dates::format_utc(n("started_at_ms")),
        s("function"),
        n("version"),
        s("invocation_id"),
    );
    let mut text = String::new();
    for entry in log
        .get("entries")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        text.push_str(entry.get("text").and_then(Value::as_str).unwrap_or(""));
    }
    print!("{text}");
    if !text.is_empty() && !text.ends_with('\n') {
        println!();
    }
    std::io::stdout().flush()?;
    Ok(())
}
