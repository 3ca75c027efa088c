//! hms-sync keeps legacy systems in sync with modern ones.
//!
//! # Layout, in the order a change travels
//!
//! - [`watcher`] — Change Watcher: drop directories and the ingest socket -> `ChangeSet`
//! - [`diff`] — Diff Engine: snapshot + new state -> minimal `Delta`; projection; merge
//! - [`queue`] — Sync Queue: the only module that touches the store (redb); durable, ordered, coalescing
//! - [`replay`] — Replay Worker: one per target; lease -> deliver -> ack | retry | dead-letter
//! - [`translator`] — Translator: `Delta` -> bytes in the legacy system's format
//! - [`transport`] — Transport: bytes -> `Outcome` (delivered, down, rejected)
//!
//! Around them: [`config`] and [`connector`] (what the operator wrote), [`daemon`]
//! (wires the pieces, owns shutdown), [`control`] (the CLI's local path to the
//! daemon), [`status`] (read-only HTTP view), [`delivery_log`], [`cli`],
//! [`alerts`] (`alert_command` on conditions that start and clear), [`paused`]
//! (targets an operator paused, kept across restarts), [`tap`] (payloads as they
//! go on the wire, for `hms-sync tap`).

pub mod alerts;
pub mod cli;
pub mod config;
pub mod connector;
pub mod control;
pub mod daemon;
pub mod delivery_log;
pub mod diff;
pub mod paused;
pub mod problem;
pub mod queue;
pub mod record;
pub mod replay;
pub mod status;
pub mod tap;
pub mod translator;
pub mod transport;
pub mod watcher;
