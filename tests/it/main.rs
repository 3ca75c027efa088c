//! Integration tests: the real `hms-sync` binary on temp folders, driven the way
//! a county's scripts and operators drive it.

mod harness;

mod adaptive;
mod alerts;
mod bad_input;
mod cli;
mod cobol;
mod crash;
mod dialects;
mod durability;
mod fixed;
mod many_files;
mod operator;
mod page;
mod pickup;
mod pickup_power;
mod pipeline;
mod power_loss;
mod powerfs;
mod reload;
mod serial;
mod snapshot;
mod soap;
mod store;
mod tap;
