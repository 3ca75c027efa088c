//! `hms-sync send`: NDJSON envelopes through the ingest socket, pipelined. Lines
//! answered "busy" are sent again after a pause, so a send never loses a line.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::config::Config;

pub fn run(cfg: &Config, files: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let mut lines: Vec<(String, usize, String)> = Vec::new();
    let sources = if files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        files
    };
    for f in sources {
        let reader: Box<dyn Read> = if f.as_os_str() == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(
                std::fs::File::open(&f).with_context(|| format!("cannot open {}", f.display()))?,
            )
        };
        let name = if f.as_os_str() == "-" {
            "stdin".to_string()
        } else {
            f.display().to_string()
        };
        for (i, line) in BufReader::new(reader).lines().enumerate() {
            let line = line.with_context(|| format!("cannot read {name}"))?;
            if !line.trim().is_empty() {
                lines.push((name.clone(), i + 1, line));
            }
        }
    }
    let socket = cfg.socket.path.clone();
    let refused = super::block_on(async move {
        let mut todo: Vec<usize> = (0..lines.len()).collect();
        let mut refused = 0usize;
        let mut accepted = 0usize;
        let mut pause = Duration::from_millis(200);
        while !todo.is_empty() {
            let stream = tokio::net::UnixStream::connect(&socket)
                .await
                .with_context(|| {
                    format!(
                        "cannot connect to {} (is hms-sync running?)",
                        socket.display()
                    )
                })?;
            let (read, mut write) = stream.into_split();
            let batch = todo.clone();
            let to_send: Vec<String> = batch.iter().map(|&i| lines[i].2.clone()).collect();
            let writer = tokio::spawn(async move {
                for l in to_send {
                    write.write_all(l.as_bytes()).await?;
                    write.write_all(b"\n").await?;
                }
                write.flush().await?;
                Ok::<_, std::io::Error>(write)
            });
            let mut answers = tokio::io::BufReader::new(read).lines();
            let mut again = Vec::new();
            for &i in &batch {
                let answer = answers
                    .next_line()
                    .await?
                    .context("the daemon closed the connection")?;
                let v: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
                if v["ok"] == Value::Bool(true) {
                    accepted += 1;
                } else if v["retry"] == Value::Bool(true) {
                    again.push(i);
                } else {
                    refused += 1;
                    let (name, n, _) = &lines[i];
                    eprintln!(
                        "{name}: line {n}: refused: {}",
                        v["error"].as_str().unwrap_or(&answer)
                    );
                }
            }
            let _ = writer.await;
            // Resend from the first line answered busy to the end, in order: a
            // later line of the same record may have been accepted meanwhile, and
            // must be applied after the earlier one again (changes are full states).
            if let Some(&first) = again.first() {
                again = batch.iter().copied().filter(|&i| i >= first).collect();
            }
            if !again.is_empty() {
                eprintln!(
                    "{} line(s) answered busy; sending them again in {:?}",
                    again.len(),
                    pause
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
            todo = again;
        }
        eprintln!("{accepted} accepted, {refused} refused");
        Ok::<_, anyhow::Error>(refused)
    })?;
    Ok(if refused > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
