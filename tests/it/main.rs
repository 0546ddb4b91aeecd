//! Integration tests: one binary, a module per area. They drive both the library and the
//! built `cairn` binary as a user would (temp dirs, exit codes, stderr).

mod common;

mod async_commit;
mod bad_input;
mod cli;
mod concurrency;
mod crash;
mod dedup;
mod disk_full;
mod failpoints;
mod fsync_order;
mod gc;
mod provenance;
mod remote;
mod roundtrip;
mod torch;
mod txn;
