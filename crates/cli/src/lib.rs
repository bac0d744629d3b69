//! evershell-cli: the command line. `admin` works directly on the store (like `serve`, it takes `--data-dir` /
//! `--database-url`); everything else is a client of the `/v1` API, configured by flags, `EVERSHELL_URL` /
//! `EVERSHELL_API_KEY`, or the file `evershell login` writes.

pub mod activity;
pub mod admin;
pub mod client;
pub mod output;
pub mod profile;
pub mod secrets;
pub mod sse;
pub mod tasks;
pub mod tasks_form;
pub mod workspaces;
