//! Gatehouse: a self-hosted access-control plane for video calls with a Daily-compatible REST
//! API. The binary (`src/main.rs`) is a thin shell over this library; tests and benchmarks use
//! the library directly where a black-box server would be too coarse.
// The OpenAPI document is one large `json!` literal.
#![recursion_limit = "256"]

pub mod acme;
pub mod api;
pub mod app;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod disk;
pub mod events;
pub mod janus;
pub mod metrics;
pub mod properties;
pub mod rooms;
pub mod scheduler;
pub mod sessions;
pub mod store;
pub mod tokens;
pub mod web;
pub mod webhooks;
