//! glia: a serverless platform for WebAssembly model functions.
//!
//! The binary (`glia`) is a thin launcher over this library; tests drive the
//! same library with a real listener on a free port.

pub mod api;
pub mod auth;
pub mod billing;
pub mod builtins;
pub mod capabilities;
pub mod cli;
pub mod config;
pub mod cputime;
pub mod datadir;
pub mod dates;
pub mod logs;
pub mod nn;
pub mod query;
pub mod registry;
pub mod runtime;
pub mod scheduler;
pub mod server;
pub mod telemetry;

pub use server::{Platform, StartError, serve};
