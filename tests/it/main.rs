//! The integration tests, one test crate (one binary linking burn, not eight): a module per
//! area, sharing the fixture helpers in [`common`].

mod common;

mod bad_input;
mod cli;
mod cpu_trainer;
mod engine;
mod fuzz;
mod optim;
mod parity;
mod predict;
mod quantize;
mod summary;
mod train;
mod train_paths;
mod weights;
