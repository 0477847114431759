//! `lbctl`'s logic: a client of the admin API and the commands built on it.
//! The binary only parses arguments and calls in here.

pub mod client;
pub mod commands;
pub mod demo;
pub mod generate;
pub mod import;
pub mod join_check;
pub mod probe;

pub use client::{AdminAddr, AdminClient, ClientError, TokenFileError, read_token_file};
