//! Browser single sign-on: its settings and the sessions a login opens; never decides a request (the core does) and never writes a wire format (the HTTP door does).

pub mod config;
pub mod store;
