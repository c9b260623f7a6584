//! Shared test kit.
#![allow(dead_code)]

pub mod keys;
pub mod server;
