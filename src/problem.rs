//! What every connector kind's `validate` needs and nothing more: the typed
//! [`Problem`] it reports (file, line, key, message), the [`Problems`] list that
//! finds the line, and the value parsers all kinds share.
//!
//! **Invariants:** a leaf module: it imports nothing of this crate, so a
//! translator or transport can report problems without importing `connector`
//! or `config` (no import circle).

use std::fmt;
use std::time::Duration;

/// One thing wrong in a configuration file, as `check` prints it.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The file the problem is in (`connectors/x/connector.toml`, a copybook).
    pub file: String,
    /// 1-based line, when the problem can be placed on one.
    pub line: Option<usize>,
    /// The key (or copybook item) it is about; empty when it is about the file.
    pub key: String,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}: line {line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// The problems found in one TOML file; places each on the line of its key.
pub struct Problems<'a> {
    file: String,
    text: &'a str,
    list: Vec<Problem>,
}

impl<'a> Problems<'a> {
    pub fn new(file: impl Into<String>, text: &'a str) -> Problems<'a> {
        Problems {
            file: file.into(),
            text,
            list: Vec::new(),
        }
    }

    /// A problem about `key` in `[table]` (None: the top level), placed on the
    /// key's line if the file has it.
    pub fn at(&mut self, table: Option<&str>, key: &str, message: impl Into<String>) {
        let line = line_of(self.text, table, key);
        self.list.push(Problem {
            file: self.file.clone(),
            line,
            key: key.to_string(),
            message: message.into(),
        });
    }

    /// A problem found elsewhere (a copybook, a template) that already knows its place.
    pub fn push(&mut self, problem: Problem) {
        self.list.push(problem);
    }

    /// "file: line L: " for `key` — for messages shown later (at start-up).
    pub fn prefix(&self, table: Option<&str>, key: &str) -> String {
        match line_of(self.text, table, key) {
            Some(l) => format!("{}: line {l}: ", self.file),
            None => format!("{}: ", self.file),
        }
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.list
    }

    /// Every problem as `check` prints it, one a line (for tests).
    #[cfg(test)]
    pub fn joined(self) -> String {
        let lines: Vec<String> = self.list.iter().map(ToString::to_string).collect();
        lines.join("\n")
    }
}

/// The line where `key = ...` is written (inside `[table]` if given), for messages
/// about values that parsed but make no sense.
pub fn line_of(text: &str, table: Option<&str>, key: &str) -> Option<usize> {
    let mut current: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            current = Some(
                line.trim_matches(|c| c == '[' || c == ']')
                    .trim()
                    .to_string(),
            );
            continue;
        }
        let in_table = match (table, &current) {
            (None, None) => true,
            (Some(t), Some(c)) => t == c,
            _ => false,
        };
        if in_table && line.split('=').next().map(str::trim) == Some(key) {
            return Some(i + 1);
        }
    }
    None
}

/// A TOML error's line (from its span) and message, for a section read into a
/// kind's raw struct.
pub fn toml_message(text: &str, e: &toml::de::Error) -> (Option<usize>, String) {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    (line, e.message().trim().to_string())
}

/// `[table]` ("format" or "transport") read into a kind's own raw struct,
/// straight from the file's text so that a wrong type names its line. Keys of
/// other kinds were already refused by `connector.rs` against the kind's key
/// list; serde skips them here, so each kind's struct sees only its own.
pub fn section<T: serde::de::DeserializeOwned>(
    text: &str,
    table: &str,
    problems: &mut Problems<'_>,
) -> Option<T> {
    #[derive(serde::Deserialize)]
    struct InFormat<T> {
        format: T,
    }
    #[derive(serde::Deserialize)]
    struct InTransport<T> {
        transport: T,
    }
    let read = if table == "format" {
        toml::from_str::<InFormat<T>>(text).map(|s| s.format)
    } else {
        toml::from_str::<InTransport<T>>(text).map(|s| s.transport)
    };
    match read {
        Ok(raw) => Some(raw),
        Err(e) => {
            let (line, message) = toml_message(text, &e);
            problems.push(Problem {
                file: problems.file().to_string(),
                line,
                key: String::new(),
                message: format!("[{table}] {message}"),
            });
            None
        }
    }
}

/// Parses "10s", "200ms", "5m" (humantime).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("`{text}` is not a duration ({e}); write it like \"10s\", \"200ms\" or \"5m\"")
    })
}
