//! Integration tests of the ARM front door: the real server over HTTPS on an ephemeral port, a real
//! SQLite data dir (or, with `RSVAULT_TEST_API_STORE=postgres`, a real PostgreSQL store), reqwest as the
//! client. One test binary; `harness` starts servers.

#![allow(clippy::type_complexity)] // test cases are tables of tuples on purpose

mod harness;

// The fault-injecting HTTP proxy the engine's object-store tests use too.
#[path = "../../../rsvault-engine/tests/common/faultproxy.rs"]
mod faultproxy;

mod access;
mod backup;
mod conventions;
mod faults;
mod fidelity;
mod identity;
mod ilr;
mod immutability;
mod libvirt;
mod limits;
mod linked;
mod objstore;
mod recovery;
mod resources;
mod schedule;
mod security;
mod validate;
