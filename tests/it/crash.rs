//! Crash safety under SIGKILL (written by the durability work).
